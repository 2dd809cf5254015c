package gguf

import (
	"errors"
	"fmt"
	"strings"

	"github.com/tpconvert/tpconvert/formats"
)

// Errors returned (wrapped in a *FormatError) for malformed input.
var (
	// ErrBadMagic means the file does not start with "GGUF".
	ErrBadMagic = errors.New("gguf: not a GGUF file (bad magic)")
	// ErrUnsupportedVersion means the file's version is not 2 or 3.
	ErrUnsupportedVersion = errors.New("gguf: unsupported version")
	// ErrTruncated means the data ends before a field it announces.
	ErrTruncated = errors.New("gguf: unexpected end of data")
	// ErrLimit means a count or length exceeds one of the package's limits.
	ErrLimit = errors.New("gguf: limit exceeded")
	// ErrFormat means a field holds a value the format does not allow.
	ErrFormat = errors.New("gguf: malformed file")
)

// Errors returned by Writer and Quantize.
var (
	// ErrWriteOrder means WriteTensor was called with a tensor other than
	// the next one announced to NewWriter, or too often.
	ErrWriteOrder = errors.New("gguf: tensor written out of order")
	// ErrWriteSize means WriteTensor got a byte count other than the
	// announced tensor's size.
	ErrWriteSize = errors.New("gguf: wrong tensor data size")
	// ErrIncomplete means Close was called before every tensor was written.
	ErrIncomplete = errors.New("gguf: not all tensors written")
	// ErrClosed means the Reader or Writer was used after Close.
	ErrClosed = errors.New("gguf: use after close")
	// ErrUnsupportedType means Quantize does not implement the dtype.
	ErrUnsupportedType = errors.New("gguf: unsupported quantization type")
)

// FormatError describes a problem found while parsing a GGUF file or
// key/value section. Err is one of the package's sentinel errors, possibly
// wrapped with details; errors.Is sees through FormatError.
type FormatError struct {
	File   string // file name, empty when parsing bytes
	Tensor string // tensor name, empty when the problem is not in a tensor
	Offset int64  // byte offset of the offending field in the file
	Err    error
}

// Error formats the error as "gguf: file: tensor "name": offset N: detail".
func (e *FormatError) Error() string {
	var b strings.Builder
	b.WriteString("gguf: ")
	formats.WritePlace(&b, e.File, e.Tensor)
	fmt.Fprintf(&b, "offset %d: ", e.Offset)
	b.WriteString(strings.TrimPrefix(e.Err.Error(), "gguf: "))
	return b.String()
}

// Unwrap returns the underlying error.
func (e *FormatError) Unwrap() error { return e.Err }
