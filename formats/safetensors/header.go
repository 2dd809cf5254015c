// Package safetensors reads and writes the safetensors container
// (https://github.com/huggingface/safetensors, format as documented in its
// README and implemented by the reference Rust crate): an 8-byte
// little-endian header length N, N bytes of JSON header, then the tensor
// bytes.
//
// The header is a JSON object. Each key other than "__metadata__" names a
// tensor and maps to {"dtype": NAME, "shape": [d0, d1, ...],
// "data_offsets": [BEGIN, END]}, offsets relative to the start of the data
// section. "__metadata__", when present, maps to an object of string values.
//
// Open accepts a single file or a Hugging Face checkout directory (sharded
// with a *.safetensors.index.json, or one or more *.safetensors files) and
// implements formats.Source over read-only memory maps. NewWriter streams a
// single file and NewDirWriter a whole checkout; both implement
// formats.Sink. Files read by Open are written back byte for byte when the
// tensors are unchanged.
//
// Limits, as in the reference implementation: a header is at most
// MaxHeaderSize bytes and must start with '{'; the tensors must cover the
// data section exactly, without holes or overlaps (in any header order); a
// tensor's byte length must equal its element count times its element size.
package safetensors

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/tpconvert/tpconvert/formats"
	"github.com/tpconvert/tpconvert/tensor"
)

// MaxHeaderSize is the largest JSON header (and index file) accepted, in
// bytes: 100,000,000, the limit of the reference implementation.
const MaxHeaderSize = 100_000_000

// metadataKey is the header key of the free-form string map.
const metadataKey = "__metadata__"

// ErrFormat is matched (with errors.Is) by every error about a malformed
// file, header or index.
var ErrFormat = errors.New("safetensors: malformed file")

// FormatError reports a malformed safetensors file, header or index. It
// matches ErrFormat and its cause with errors.Is.
type FormatError struct {
	File   string // path of the file (empty when not known)
	Tensor string // tensor name, empty when the problem is not about one tensor
	Err    error  // the problem
}

// Error returns "safetensors: FILE: tensor "NAME": PROBLEM".
func (e *FormatError) Error() string {
	var b strings.Builder
	b.WriteString("safetensors: ")
	formats.WritePlace(&b, e.File, e.Tensor)
	b.WriteString(e.Err.Error())
	return b.String()
}

// Unwrap returns ErrFormat and the cause.
func (e *FormatError) Unwrap() []error { return []error{ErrFormat, e.Err} }

func formatErr(tensorName, format string, args ...any) error {
	return &FormatError{Tensor: tensorName, Err: fmt.Errorf(format, args...)}
}

// inFile sets the file of a FormatError (or wraps another error in one).
func inFile(path string, err error) error {
	var fe *FormatError
	if errors.As(err, &fe) {
		if fe.File == "" {
			fe.File = path
		}
		return err
	}
	return &FormatError{File: path, Err: err}
}

// dtypes maps the safetensors dtype names to ours: those of the format's
// reference implementation (huggingface/safetensors, safetensors/src/
// tensor.rs, Dtype), the 8-bit float types included, which are carried as
// opaque bytes. github.com/nlpodyssey/safetensors, the Go reader the tests
// check this package against, predates the 8-bit float types and reads a
// whole file into memory: it is not used here (see ARCHITECTURE.md, Notes).
var dtypes = map[string]tensor.DType{
	"BOOL":    tensor.Bool,
	"U8":      tensor.U8,
	"I8":      tensor.I8,
	"I16":     tensor.I16,
	"U16":     tensor.U16,
	"F16":     tensor.F16,
	"BF16":    tensor.BF16,
	"I32":     tensor.I32,
	"U32":     tensor.U32,
	"F32":     tensor.F32,
	"F64":     tensor.F64,
	"I64":     tensor.I64,
	"U64":     tensor.U64,
	"F8_E4M3": tensor.F8E4M3,
	"F8_E5M2": tensor.F8E5M2,
	"F8_E8M0": tensor.F8E8M0,
}

// dtypeNames holds the safetensors name of every dtype the format can store.
var dtypeNames = func() map[tensor.DType]string {
	m := make(map[tensor.DType]string, len(dtypes))
	for name, d := range dtypes {
		m[d] = name
	}
	return m
}()

// ParseDType returns the DType of a safetensors dtype name ("F32", "BOOL",
// "F8_E4M3"). Names of other containers' types (ggml's "Q4_K") are refused.
func ParseDType(name string) (tensor.DType, error) {
	if d, ok := dtypes[name]; ok {
		return d, nil
	}
	return tensor.Invalid, fmt.Errorf("%w %q", tensor.ErrUnknownDType, name)
}

// DTypeName returns the safetensors name of d, and whether safetensors can
// store d at all.
func DTypeName(d tensor.DType) (string, bool) {
	name, ok := dtypeNames[d]
	return name, ok
}

// entry is one tensor of a parsed header.
type entry struct {
	name       string
	dtype      tensor.DType
	shape      []int64
	begin, end uint64 // relative to the data section
}

// header is a parsed JSON header.
type header struct {
	tensors  []entry // in header key order
	metadata []byte  // the "__metadata__" value verbatim; nil when absent
	metaPos  int     // number of tensor keys before "__metadata__"; -1 when absent
}

// parseHeader parses a JSON header (without its length prefix). It keeps
// key order and the raw "__metadata__" bytes, and refuses duplicate keys.
//
// The upstream library's ReadMetadata cannot be used: it decodes the header
// into a map (losing key order and the raw metadata, and silently merging
// duplicate keys) and fails on the 8-bit float dtypes. After json.Valid
// has checked the syntax, a small scanner walks the header: several times
// faster than encoding/json's Decoder.Token on headers of thousands of
// tensors.
func parseHeader(b []byte) (*header, error) {
	if !utf8.Valid(b) {
		return nil, formatErr("", "header is not valid UTF-8")
	}
	if len(b) == 0 || b[0] != '{' {
		return nil, formatErr("", "header does not start with '{'")
	}
	if !json.Valid(b) {
		var v struct{}
		err := json.Unmarshal(b, &v) // for the syntax error's message and offset
		if err == nil {
			err = errors.New("invalid JSON")
		}
		return nil, formatErr("", "header: %w", err)
	}
	h := &header{metaPos: -1}
	seen := make(map[string]struct{})
	s := &scanner{b: b, i: 1}
	for {
		key, raw, ok := s.member()
		if !ok {
			break
		}
		if _, dup := seen[key]; dup {
			return nil, formatErr(key, "duplicate name in header")
		}
		seen[key] = struct{}{}
		if key == metadataKey {
			if err := checkMetadata(raw); err != nil {
				return nil, err
			}
			h.metadata = bytes.Clone(raw)
			h.metaPos = len(h.tensors)
			continue
		}
		e, err := parseEntry(key, raw)
		if err != nil {
			return nil, err
		}
		h.tensors = append(h.tensors, e)
	}
	return h, nil
}

// scanner walks syntactically valid JSON (checked with json.Valid). It
// never indexes out of range, even on invalid input.
type scanner struct {
	b []byte
	i int
}

func (s *scanner) peek() byte {
	if s.i < len(s.b) {
		return s.b[s.i]
	}
	return 0
}

func (s *scanner) ws() {
	for s.i < len(s.b) && (s.b[s.i] == ' ' || s.b[s.i] == '\t' || s.b[s.i] == '\n' || s.b[s.i] == '\r') {
		s.i++
	}
}

// member reads the next "key": value of an object whose '{' (and any
// previous members) have been read, and returns the decoded key and the raw
// value. At the closing '}' it reads it and reports false.
func (s *scanner) member() (key string, raw []byte, ok bool) {
	s.ws()
	if s.peek() == ',' {
		s.i++
		s.ws()
	}
	if s.peek() != '"' {
		s.i++ // '}'
		return "", nil, false
	}
	key = s.str()
	s.ws()
	s.i++ // ':'
	s.ws()
	start := s.i
	s.skip()
	return key, s.b[start:min(s.i, len(s.b))], true
}

// str reads a string and returns its decoded value.
func (s *scanner) str() string {
	start := s.i
	escaped := s.skipStr()
	raw := s.b[start:min(s.i, len(s.b))]
	if !escaped && len(raw) >= 2 {
		return string(raw[1 : len(raw)-1])
	}
	var v string
	_ = json.Unmarshal(raw, &v)
	return v
}

// skipStr skips a string and reports whether it holds escapes.
func (s *scanner) skipStr() bool {
	escaped := false
	s.i++
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case '\\':
			escaped = true
			s.i += 2
			continue
		case '"':
			s.i++
			return escaped
		}
		s.i++
	}
	return escaped
}

// skip skips one value.
func (s *scanner) skip() {
	switch s.peek() {
	case '"':
		s.skipStr()
	case '{', '[':
		depth := 0
		for s.i < len(s.b) {
			switch s.b[s.i] {
			case '"':
				s.skipStr()
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					s.i++
					return
				}
			}
			s.i++
		}
	default:
		for s.i < len(s.b) && !isDelim(s.b[s.i]) {
			s.i++
		}
	}
}

func isDelim(c byte) bool {
	return c == ',' || c == '}' || c == ']' || c == ' ' || c == '\t' || c == '\n' || c == '\r'
}

// uints reads an array of non-negative integers (no sign, fraction or
// exponent; no null, string or nested elements).
func (s *scanner) uints() ([]uint64, error) {
	if s.peek() != '[' {
		return nil, errors.New("missing or not an array")
	}
	s.i++
	var out []uint64
	for {
		s.ws()
		switch s.peek() {
		case ']':
			s.i++
			return out, nil
		case ',':
			s.i++
			s.ws()
		}
		start := s.i
		for s.i < len(s.b) && !isDelim(s.b[s.i]) {
			s.i++
		}
		tok := s.b[start:s.i]
		if len(tok) == 0 {
			return nil, errors.New("malformed array")
		}
		for _, c := range tok {
			if c < '0' || c > '9' {
				return nil, fmt.Errorf("%s is not a natural number", tok)
			}
		}
		v, err := strconv.ParseUint(string(tok), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", tok, err)
		}
		out = append(out, v)
	}
}

// checkMetadata checks that raw is a valid "__metadata__" value: an object
// of strings (or null), as the reference implementation requires.
func checkMetadata(raw []byte) error {
	if !utf8.Valid(raw) {
		return formatErr("", "%s is not valid UTF-8", metadataKey)
	}
	if len(raw) == 0 || (raw[0] != '{' && !bytes.Equal(raw, []byte("null"))) {
		return formatErr("", "%s is not a JSON object", metadataKey)
	}
	var m map[string]string
	if err := json.Unmarshal(raw, &m); err != nil {
		return formatErr("", "%s: %w", metadataKey, err)
	}
	return nil
}

// parseEntry parses one tensor's {"dtype", "shape", "data_offsets"} object
// (valid JSON). Like the upstream library, it wants exactly these keys.
func parseEntry(name string, raw []byte) (entry, error) {
	e := entry{name: name}
	if len(raw) == 0 || raw[0] != '{' {
		return e, formatErr(name, "header entry is not a JSON object")
	}
	var have [3]bool
	s := &scanner{b: raw, i: 1}
	for {
		key, val, ok := s.member()
		if !ok {
			break
		}
		vs := &scanner{b: val}
		var err error
		switch key {
		case "dtype":
			if have[0] {
				return e, formatErr(name, "duplicate key %q in header entry", key)
			}
			have[0] = true
			if vs.peek() != '"' {
				return e, formatErr(name, "dtype %s is not a string", val)
			}
			if e.dtype, err = ParseDType(vs.str()); err != nil {
				return e, &FormatError{Tensor: name, Err: err}
			}
		case "shape":
			shape, err := vs.uintsOnce(&have[1], name, key)
			if err != nil {
				return e, err
			}
			e.shape = make([]int64, len(shape))
			for i, v := range shape {
				if v > math.MaxInt64 {
					return e, formatErr(name, "shape %v: %w", shape, tensor.ErrShape)
				}
				e.shape[i] = int64(v)
			}
		case "data_offsets":
			offs, err := vs.uintsOnce(&have[2], name, key)
			if err != nil {
				return e, err
			}
			if len(offs) != 2 {
				return e, formatErr(name, "data_offsets has %d values, want 2", len(offs))
			}
			e.begin, e.end = offs[0], offs[1]
		default:
			return e, formatErr(name, "unexpected key %q in header entry", key)
		}
	}
	for i, k := range []string{"dtype", "shape", "data_offsets"} {
		if !have[i] {
			return e, formatErr(name, "header entry lacks %q", k)
		}
	}
	return e, nil
}

// uintsOnce parses the array of unsigned integers of the member key of
// tensor name's header entry; *seen says whether key came before, which is
// an error, and is set.
func (s *scanner) uintsOnce(seen *bool, name, key string) ([]uint64, error) {
	if *seen {
		return nil, formatErr(name, "duplicate key %q in header entry", key)
	}
	*seen = true
	v, err := s.uints()
	if err != nil {
		return nil, formatErr(name, "%s: %w", key, err)
	}
	return v, nil
}

// layout checks the tensors of a header against a data section of dataLen
// bytes, following the reference implementation's validation but accepting
// any header order: each tensor's byte length matches its dtype and shape
// (with overflow checks), and sorted by offset the tensors cover
// [0, dataLen) exactly, with neither holes nor overlaps. It returns the
// tensors' indices sorted by offset.
func layout(tensors []entry, dataLen int64) ([]int, error) {
	for _, e := range tensors {
		size, err := tensor.ByteSize(e.dtype, e.shape)
		if err != nil {
			return nil, &FormatError{Tensor: e.name, Err: err}
		}
		switch {
		case e.begin > e.end:
			return nil, formatErr(e.name, "data_offsets [%d, %d] decrease", e.begin, e.end)
		case e.end > uint64(dataLen):
			return nil, formatErr(e.name, "data_offsets [%d, %d] run past the data section (%d bytes)", e.begin, e.end, dataLen)
		case int64(e.end-e.begin) != size:
			return nil, formatErr(e.name, "data_offsets [%d, %d] hold %d bytes, %s%v needs %d", e.begin, e.end, e.end-e.begin, e.dtype, e.shape, size)
		}
	}
	order := make([]int, len(tensors))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool {
		x, y := &tensors[order[a]], &tensors[order[b]]
		return x.begin < y.begin || (x.begin == y.begin && x.end < y.end)
	})
	var pos uint64
	for k, i := range order {
		e := &tensors[i]
		if e.begin < pos {
			return nil, formatErr(e.name, "data_offsets [%d, %d] overlap tensor %q", e.begin, e.end, tensors[order[k-1]].name)
		}
		if e.begin > pos {
			return nil, formatErr(e.name, "hole of %d bytes before data_offsets [%d, %d]", e.begin-pos, e.begin, e.end)
		}
		pos = e.end
	}
	if pos != uint64(dataLen) {
		return nil, formatErr("", "tensors cover %d bytes of a %d-byte data section", pos, dataLen)
	}
	return order, nil
}

// appendString appends s as a JSON string the way serde_json (used by the
// reference implementation) writes it: only '"', '\\' and control
// characters are escaped; everything else, '<' or U+2028 included, is
// written as is. s must be valid UTF-8.
func appendString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c >= 0x20:
			b = append(b, c)
		case c == '\b':
			b = append(b, '\\', 'b')
		case c == '\f':
			b = append(b, '\\', 'f')
		case c == '\n':
			b = append(b, '\\', 'n')
		case c == '\r':
			b = append(b, '\\', 'r')
		case c == '\t':
			b = append(b, '\\', 't')
		default:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&15])
		}
	}
	return append(b, '"')
}

// appendEntry appends a tensor's header entry, keys in the reference order.
func appendEntry(b []byte, name string, dtype string, shape []int64, begin, end int64) []byte {
	b = appendString(b, name)
	b = append(b, `:{"dtype":`...)
	b = appendString(b, dtype)
	b = append(b, `,"shape":[`...)
	for i, d := range shape {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, d, 10)
	}
	b = append(b, `],"data_offsets":[`...)
	b = strconv.AppendInt(b, begin, 10)
	b = append(b, ',')
	b = strconv.AppendInt(b, end, 10)
	return append(b, "]}"...)
}

// encodeMetadata returns a "__metadata__" object with sorted keys.
func encodeMetadata(m map[string]string) []byte {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b := []byte{'{'}
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, k)
		b = append(b, ':')
		b = appendString(b, m[k])
	}
	return append(b, '}')
}
