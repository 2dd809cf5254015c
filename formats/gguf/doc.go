// Package gguf reads and writes GGUF files, the container of ggml and
// llama.cpp, and decodes ggml's block-quantized tensor types to float32.
//
// # Format
//
// The layout follows the GGUF specification (ggml repository, docs/gguf.md,
// file format versions 2 and 3; version 1 is not supported). All integers
// are little-endian:
//
//	magic          "GGUF"
//	version        uint32 (2 or 3)
//	tensor_count   uint64
//	kv_count       uint64
//	kv[kv_count]   key (string), value_type (uint32), value
//	info[tensor_count]
//	               name (string), n_dims (uint32), ne[n_dims] (uint64),
//	               ggml_type (uint32), offset (uint64, relative to the data section)
//	padding        zero bytes up to a multiple of the alignment
//	data           tensor data, each tensor at its offset
//
// A string is a uint64 byte length followed by that many bytes (no NUL). An
// array value is an element value_type (uint32), a uint64 element count and
// the elements; arrays MAY nest. The alignment is the uint32 value of the
// key general.alignment, 32 when the key is absent; it MUST be a non-zero
// power of two and every tensor offset MUST be a multiple of it.
//
// ne[0] is the innermost (fastest varying) dimension. Reader reverses ne into
// tensor.Info.Shape, outermost first, so a matrix with ne = [cols, rows] has
// Shape [rows, cols]; Writer reverses it back.
//
// # Limits
//
// Everything read from a file is untrusted. Open and ParseKV reject, with a
// *FormatError naming the file, the tensor (when there is one) and the byte
// offset:
//
//   - versions other than 2 and 3;
//   - kv_count or tensor_count above MaxCount, or larger than the bytes
//     left in the file could hold;
//   - keys and tensor names longer than MaxKeyLen bytes, other strings
//     longer than MaxStringLen bytes;
//   - arrays of more than MaxArrayLen elements or more elements than the
//     remaining bytes could hold, and arrays nested deeper than MaxDepth;
//   - unknown value types, duplicate keys, a general.alignment that is not a
//     uint32 non-zero power of two;
//   - duplicate tensor names, n_dims outside 1..MaxDims, a dimension above
//     tensor.MaxElems, element counts above tensor.MaxElems, unknown ggml
//     types, an innermost dimension that is not a whole number of blocks;
//   - tensor offsets that are not a multiple of the alignment, tensor data
//     that does not lie inside the file, and tensors whose data overlap.
//
// Tensor names are limited to MaxKeyLen bytes rather than ggml's 63, so that
// files written by other tools can still be read and rewritten.
//
// # Rewriting
//
// Writer lays out the tensors in data order, each at the next multiple of
// the alignment, with zero padding, and writes Meta's key/value section
// verbatim. This is the layout ggml and the gguf Python package write, so
// reading such a file and writing it back reproduces it byte for byte;
// Reader.CheckReproducible reports whether that holds for a given file.
//
// # Quantized types
//
// The init function registers float32 decoders with tensor.RegisterDequantizer
// for Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K and
// IQ4_NL, following the block structs of ggml's ggml-common.h and the
// reference dequantize_row_* functions of ggml-quants.c. Quantize implements
// ggml's reference round-to-nearest quantizers (quantize_row_*_ref) for
// Q8_0, Q4_0 and Q4_1.
package gguf
