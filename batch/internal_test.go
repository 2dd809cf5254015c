package batch

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/tpconvert/tpconvert/batch/checkout"
)

func FuzzReadManifest(f *testing.F) {
	f.Add([]byte(`{"format":"tpconvert-batch","format_version":1,"model":"m","weights":[{"source":"model.safetensors","output":"model.tpk"}],"files":[{"path":"config.json"}]}`))
	f.Add([]byte(`{"format":"tpconvert-batch","format_version":1,"files":[{"path":"../x"}]}`))
	f.Add([]byte(`{"format":"tpconvert-batch","format_version":9}`))
	f.Add([]byte(`[]`))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, ManifestName), b, 0o644); err != nil {
			t.Fatal(err)
		}
		m, err := ReadManifest(dir)
		if err != nil {
			return
		}
		for _, w := range m.Weights {
			if !checkout.ValidName(w.Source) || !checkout.ValidName(w.Output) {
				t.Fatalf("accepted weight %q -> %q", w.Source, w.Output)
			}
		}
		for _, fl := range m.Files {
			if !checkout.ValidRelPath(fl.Path) {
				t.Fatalf("accepted path %q", fl.Path)
			}
		}
	})
}
