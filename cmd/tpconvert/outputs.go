package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/tpconvert/tpconvert/formats"
	"github.com/tpconvert/tpconvert/tensor"
)

// defaultCompressOutput returns the output path used when none is given:
// the input's name with its extension replaced by .tpk, beside it; a
// checkout directory m/ becomes the file m.tpk beside the directory.
func defaultCompressOutput(in string) string {
	in = filepath.Clean(in)
	if st, err := os.Stat(in); err == nil && st.IsDir() {
		return in + ".tpk"
	}
	return strings.TrimSuffix(in, filepath.Ext(in)) + ".tpk"
}

// defaultRestoreOutput returns the output path used when none is given:
// model.tpk becomes model.restored.safetensors or model.restored.gguf, and
// a sharded checkout becomes the directory model.restored/.
func defaultRestoreOutput(in string, meta *formats.Meta, to formats.Kind, dir bool) string {
	base := strings.TrimSuffix(filepath.Clean(in), filepath.Ext(in)) + ".restored"
	if dir {
		return base
	}
	if to == "" {
		to = meta.Kind
	}
	return base + "." + string(to)
}

type errBadDType string

func (e errBadDType) Error() string {
	return fmt.Sprintf("unknown dtype %q (want source, f32, f16 or bf16)", string(e))
}

// parseDType parses "source", "f32", "f16" or "bf16" (case-insensitive);
// "source" and "" give tensor.Invalid.
func parseDType(s string) (tensor.DType, error) {
	switch strings.ToLower(s) {
	case "", "source":
		return tensor.Invalid, nil
	case "f32", "fp32", "float32":
		return tensor.F32, nil
	case "f16", "fp16", "float16":
		return tensor.F16, nil
	case "bf16", "bfloat16":
		return tensor.BF16, nil
	}
	return tensor.Invalid, errBadDType(s)
}
