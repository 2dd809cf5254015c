package formats_test

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/tpconvert/tpconvert/formats"
	_ "github.com/tpconvert/tpconvert/formats/gguf"
	_ "github.com/tpconvert/tpconvert/formats/safetensors"
	_ "github.com/tpconvert/tpconvert/formats/tpk"
)

func write(t *testing.T, dir, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestDetect: files by their magic, the most specific first; directories
// by the weight files they hold, safetensors before GGUF.
func TestDetect(t *testing.T) {
	dir := t.TempDir()
	st := binary.LittleEndian.AppendUint64(nil, 2)
	st = append(st, "{}"...)
	// A GGUF header (version 3) whose tensor count's low byte is '{'.
	gg := append([]byte("GGUF"), 3, 0, 0, 0, '{', 0, 0, 0, 0, 0, 0, 0)
	tp := append([]byte("\x89TPK\r\n\x1a\n"), 1, 0, 0, 0, 0, 0, 0, 0)
	for _, c := range []struct {
		name string
		data []byte
		want formats.Kind
	}{
		{"a.bin", st, formats.Safetensors},
		{"b.safetensors", gg, formats.GGUF},
		{"c.gguf", tp, formats.TPK},
		{"d", []byte("GGU"), ""},
		{"e", []byte("12345678["), ""},
		{"f", nil, ""},
	} {
		got, err := formats.Detect(write(t, dir, c.name, c.data))
		if c.want == "" {
			if !errors.Is(err, formats.ErrUnknownFormat) {
				t.Errorf("%s: %q, %v; want ErrUnknownFormat", c.name, got, err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("%s: %q, %v; want %q", c.name, got, err, c.want)
		}
	}

	both, one, two, none := filepath.Join(dir, "both"), filepath.Join(dir, "one"), filepath.Join(dir, "two"), filepath.Join(dir, "none")
	for _, d := range []string{both, one, two, none} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write(t, both, "m.gguf", gg)
	write(t, both, "m.safetensors", st)
	write(t, one, "m.gguf", gg)
	write(t, two, "a.gguf", gg)
	write(t, two, "b.gguf", gg)
	write(t, none, "config.json", []byte("{}"))
	for d, want := range map[string]formats.Kind{both: formats.Safetensors, one: formats.GGUF, two: "", none: ""} {
		got, err := formats.Detect(d)
		if want == "" {
			if !errors.Is(err, formats.ErrUnknownFormat) {
				t.Errorf("%s: %q, %v; want ErrUnknownFormat", d, got, err)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("%s: %q, %v; want %q", d, got, err, want)
		}
	}
}

// TestKindOfName: the extensions of the formats a restore writes, in any
// case; .tpk is not one.
func TestKindOfName(t *testing.T) {
	for name, want := range map[string]formats.Kind{
		"a/m.safetensors": formats.Safetensors, "M.SafeTensors": formats.Safetensors, "m.gguf": formats.GGUF,
		"m.GGUF": formats.GGUF, "m.tpk": "", "m": "", "safetensors": "", "m.gguf.json": "", "m.\u017fafetensors": "",
	} {
		if got := formats.KindOfName(name); got != want {
			t.Errorf("KindOfName(%q) = %q, want %q", name, got, want)
		}
	}
}

// TestRegister: every format is registered once with what it does, and a
// second registration of a kind panics.
func TestRegister(t *testing.T) {
	for _, k := range []formats.Kind{formats.Safetensors, formats.GGUF} {
		f, err := formats.Lookup(k)
		if err != nil || f.Open == nil || f.NewSink == nil || f.Dir == nil || f.OpenRecords != nil {
			t.Errorf("%s: %+v, %v", k, f, err)
		}
	}
	if f, err := formats.Lookup(formats.TPK); err != nil || f.OpenRecords == nil || f.NewRecordSink == nil || f.Open != nil || f.NewSink != nil {
		t.Errorf("tpk: %+v, %v", f, err)
	}
	if _, err := formats.Lookup("zip"); !errors.Is(err, formats.ErrUnknownFormat) {
		t.Errorf("Lookup(zip): %v", err)
	}
	defer func() {
		if recover() == nil {
			t.Error("a second registration of gguf did not panic")
		}
	}()
	formats.Register(formats.Format{Kind: formats.GGUF})
}
