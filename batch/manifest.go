package batch

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/tpconvert/tpconvert/batch/checkout"
	"github.com/tpconvert/tpconvert/internal/inputfile"
)

// Names reserved in a converted model directory besides the .tpk files.
const (
	ManifestName = checkout.ManifestName
	RunInfoName  = checkout.RunInfoName
)

// Manifest format identifiers.
const (
	ManifestFormat        = "tpconvert-batch"
	ManifestFormatVersion = 1
	unitFormat            = "tpconvert-batch-unit"
)

// maxManifestSize caps the manifest, run and unit record files read back.
const maxManifestSize = 64 << 20

// ErrManifest is matched (with errors.Is) by errors about a manifest.json
// that cannot be used.
var ErrManifest = errors.New("batch: bad manifest")

// Settings are the conversion settings recorded in a manifest. A model
// whose manifest records other settings is converted again. Workers and
// the memory budget are not settings: they do not change the output.
type Settings struct {
	Codec        string `json:"codec"`
	CodecVersion uint16 `json:"codec_version"`
	Params       string `json:"params,omitempty"`
	Rank         int    `json:"rank,omitempty"`
	GroupSize    int    `json:"group_size,omitempty"`
	Seed         uint64 `json:"seed"`
	Layers       string `json:"layers"`
	Include      string `json:"include,omitempty"`
	Exclude      string `json:"exclude,omitempty"`
	NoStats      bool   `json:"no_stats,omitempty"`
	// BPW is rate control's per-file budget in bits per parameter.
	BPW float64 `json:"bpw,omitempty"`
	// SampleRows is rate control's --sample-rows with BPW (0: default).
	SampleRows int `json:"sample_rows,omitempty"`
}

// Manifest is a converted model directory's manifest.json. It is a pure
// function of the source files and the settings: converting the same
// checkout with the same settings, in one process or in shards on several
// machines, gives the same manifest. Facts about the run (times, hosts,
// modification times) are in run.json (RunInfo).
type Manifest struct {
	Format        string `json:"format"`
	FormatVersion int    `json:"format_version"`
	Model         string `json:"model"`
	// Version is the version of tpconvert that assembled the directory.
	Version  string           `json:"tpconvert_version"`
	Settings Settings         `json:"settings"`
	Weights  []ManifestWeight `json:"weights"`
	// Files are the files copied unchanged (the index file among them).
	Files  []ManifestFile `json:"files"`
	Totals ManifestTotals `json:"totals"`
}

// ManifestWeight describes one weight file and its .tpk file.
type ManifestWeight struct {
	Source       string `json:"source"`
	Kind         string `json:"kind"`
	SourceSize   int64  `json:"source_size"`
	SourceSHA256 string `json:"source_sha256"`
	Output       string `json:"output"`
	OutputSize   int64  `json:"output_size"`
	OutputSHA256 string `json:"output_sha256"`
	Tensors      int    `json:"tensors"`
	Compressed   int    `json:"compressed"`
	Params       int64  `json:"params"`
	// BPW is the .tpk file's bytes ·8 / Params; BPWCompressed the stored
	// bytes of the compressed tensors ·8 / their parameters.
	BPW           float64 `json:"bpw"`
	BPWCompressed float64 `json:"bpw_compressed,omitempty"`
	// Version is the version of tpconvert that converted the file.
	Version string `json:"tpconvert_version"`
}

// ManifestFile is one file copied unchanged.
type ManifestFile struct {
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// ManifestTotals sums a manifest.
type ManifestTotals struct {
	SourceBytes int64   `json:"source_bytes"`
	OutputBytes int64   `json:"output_bytes"`
	FileBytes   int64   `json:"file_bytes"`
	Params      int64   `json:"params"`
	BPW         float64 `json:"bpw"`
	RatioSource float64 `json:"ratio_source"`
}

// RunInfo is a converted model directory's run.json: what varies from run
// to run. The modification times let a later run recognise unchanged
// sources without hashing them.
type RunInfo struct {
	Model     string      `json:"model"`
	Assembled string      `json:"assembled"` // RFC 3339
	Shard     string      `json:"shard"`     // "i/n" of the process that assembled
	Host      string      `json:"host,omitempty"`
	Weights   []RunWeight `json:"weights"`
	Files     []RunFile   `json:"files"`
}

// RunWeight records how one weight file was converted.
type RunWeight struct {
	Source       string  `json:"source"`
	SourceMTime  int64   `json:"source_mtime_ns"`
	Seconds      float64 `json:"seconds"`
	PeakRSSBytes int64   `json:"peak_rss_bytes,omitempty"`
	Shard        string  `json:"shard"`
	Host         string  `json:"host,omitempty"`
	Finished     string  `json:"finished"`
}

// RunFile records a copied file's modification time.
type RunFile struct {
	Path  string `json:"path"`
	MTime int64  `json:"mtime_ns"`
}

// unitRecord is written beside a converted weight file in the staging
// directory; its presence means the .tpk beside it is complete.
type unitRecord struct {
	Format   string         `json:"format"`
	Model    string         `json:"model"`
	Settings Settings       `json:"settings"`
	Weight   ManifestWeight `json:"weight"`
	Run      RunWeight      `json:"run"`
}

// ReadManifest reads and checks dir/manifest.json: the format, and that
// every name in it stays inside the directory.
func ReadManifest(dir string) (*Manifest, error) {
	var m Manifest
	p := filepath.Join(dir, ManifestName)
	if err := readJSON(p, &m); err != nil {
		return nil, err
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%s: %w: %s", p, ErrManifest, fmt.Sprintf(format, args...))
	}
	if m.Format != ManifestFormat {
		return nil, bad("format %q is not %q", m.Format, ManifestFormat)
	}
	if m.FormatVersion < 1 || m.FormatVersion > ManifestFormatVersion {
		return nil, bad("unsupported format version %d (supported 1-%d)", m.FormatVersion, ManifestFormatVersion)
	}
	// Batch writes both lists, the weights never empty: a manifest
	// without them would restore the side files alone and report success.
	if len(m.Weights) == 0 {
		return nil, bad("lists no weight file (\"weights\" is missing, null or empty)")
	}
	if m.Files == nil {
		return nil, bad("\"files\" is missing or null")
	}
	names := map[string]bool{ManifestName: true, RunInfoName: true}
	outs := map[string]bool{}
	for _, w := range m.Weights {
		if !checkout.ValidName(w.Source) || !checkout.IsWeightName(w.Source) || names[w.Source] {
			return nil, bad("invalid or repeated weight file name %q", w.Source)
		}
		if !checkout.ValidName(w.Output) || outs[w.Output] || w.Output == ManifestName || w.Output == RunInfoName {
			return nil, bad("invalid or repeated output name %q", w.Output)
		}
		names[w.Source], outs[w.Output] = true, true
	}
	for _, f := range m.Files {
		if !checkout.ValidRelPath(f.Path) || names[f.Path] {
			return nil, bad("invalid or repeated file path %q", f.Path)
		}
		names[f.Path] = true
	}
	return &m, nil
}

// readJSON decodes the JSON file at p (at most maxManifestSize bytes).
func readJSON(p string, v any) error {
	f, err := inputfile.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxManifestSize+1))
	if err != nil {
		return err
	}
	if len(b) > maxManifestSize {
		return fmt.Errorf("%s: %w: larger than %d bytes", p, ErrManifest, maxManifestSize)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w: %v", p, ErrManifest, err)
	}
	return nil
}

// writeJSON writes v as indented JSON to a new file at p and syncs it.
func writeJSON(p string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return writeSynced(p, append(b, '\n'))
}

func writeSynced(p string, b []byte) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// hashBufSize is the read size used when hashing files.
const hashBufSize = 1 << 20

// hashFile returns the hex SHA-256 of the file at p, stopping early when
// ctx is cancelled.
func hashFile(ctx context.Context, p string) (string, error) {
	f, err := inputfile.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	buf := make([]byte, hashBufSize)
	for {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		n, err := f.Read(buf)
		h.Write(buf[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			return "", fmt.Errorf("%s: %w", p, err)
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// copyFile copies src to the new file dst (creating its parent
// directories), syncs it and returns its size and SHA-256.
func copyFile(ctx context.Context, src, dst string) (int64, string, error) {
	in, err := inputfile.Open(src)
	if err != nil {
		return 0, "", err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return 0, "", err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return 0, "", err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, st.Mode().Perm()|0o200)
	if err != nil {
		return 0, "", err
	}
	h := sha256.New()
	buf := make([]byte, hashBufSize)
	var n int64
	for {
		if err := ctx.Err(); err != nil {
			out.Close()
			return 0, "", err
		}
		k, rerr := in.Read(buf)
		if k > 0 {
			h.Write(buf[:k])
			if _, err := out.Write(buf[:k]); err != nil {
				out.Close()
				return 0, "", fmt.Errorf("%s: %w", dst, err)
			}
			n += int64(k)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			out.Close()
			return 0, "", fmt.Errorf("%s: %w", src, rerr)
		}
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return 0, "", fmt.Errorf("%s: %w", dst, err)
	}
	if err := out.Close(); err != nil {
		return 0, "", fmt.Errorf("%s: %w", dst, err)
	}
	return n, hex.EncodeToString(h.Sum(nil)), nil
}

// linkOrCopy makes dst a hard link to src, or a copy where the file system
// cannot link.
func linkOrCopy(ctx context.Context, src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	_, _, err := copyFile(ctx, src, dst)
	return err
}
