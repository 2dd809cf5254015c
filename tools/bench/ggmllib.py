"""ggml's own quantize and dequantize routines, from the libggml-base of the
pinned llama-cpp-python (ctypes; no compiler needed).

gguf-py's numpy dequantization of a 1.5B-parameter k-quant file takes about
100 s on 2 cores; ggml's C routines (the ones llama.cpp itself runs) take a
few seconds. Each type's routine is checked once against gguf-py on the
first blocks of the first tensor it decodes, so a libggml whose
``ggml_type_traits`` layout differs from the one declared here fails loudly
instead of producing wrong numbers.
"""

from __future__ import annotations

import ctypes
import os

import numpy as np

TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)


class TypeTraits(ctypes.Structure):
    """struct ggml_type_traits of ggml.h (llama-cpp-python 0.3.36)."""

    _fields_ = [
        ("type_name", ctypes.c_char_p),
        ("blck_size", ctypes.c_int64),
        ("blck_size_interleave", ctypes.c_int64),
        ("type_size", ctypes.c_size_t),
        ("is_quantized", ctypes.c_bool),
        ("to_float", ctypes.c_void_p),
        ("from_float_ref", ctypes.c_void_p),
    ]


class GGML:
    """ggml_quantize_chunk and each type's to_float from libggml-base."""

    def __init__(self):
        import llama_cpp

        lib = ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so"))
        lib.ggml_quantize_chunk.restype = ctypes.c_size_t
        lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
        lib.ggml_quantize_init.argtypes = [ctypes.c_int]
        lib.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
        lib.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
        lib.ggml_get_type_traits.restype = ctypes.POINTER(TypeTraits)
        lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
        self.lib = lib
        self._to_float: dict = {}
        self._checked: set = set()

    def to_float(self, qtype):
        """Type qtype's dequantization routine, checked against its traits."""
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        t = GGMLQuantizationType(int(qtype))
        fn = self._to_float.get(t)
        if fn is None:
            tr = self.lib.ggml_get_type_traits(int(t)).contents
            block, size = GGML_QUANT_SIZES[t]
            name = (tr.type_name or b"").decode()
            if name.lower() != t.name.lower() or tr.blck_size != block or tr.type_size != size or not tr.to_float:
                raise RuntimeError(f"libggml's traits of {t.name} ({name!r}, block {tr.blck_size}, {tr.type_size} bytes) "
                                   f"do not match gguf-py's (block {block}, {size} bytes): ggml_type_traits changed")
            fn = TO_FLOAT(tr.to_float)
            self._to_float[t] = fn
        return fn

    def dequantize(self, data: np.ndarray, qtype, n: int, out: np.ndarray | None = None) -> np.ndarray:
        """Decode n values of type qtype from the raw bytes data (float32,
        1-D). F32 is copied. The first call for each type also decodes the
        first blocks with gguf-py and requires identical values. ``out``, a
        float32 array of at least n elements, is written instead of a new
        array (reusing one saves the page faults of a fresh 1 GB array)."""
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

        t = GGMLQuantizationType(int(qtype))
        raw = np.ascontiguousarray(data).view(np.uint8).ravel()
        if out is None:
            out = np.empty(n, dtype=np.float32)
        elif out.dtype != np.float32 or not out.flags.c_contiguous or out.size < n:
            raise ValueError(f"out is {out.dtype} of {out.size}, need {n} contiguous float32")
        out = out.ravel()[:n]
        if t == GGMLQuantizationType.F32:
            out[:] = raw.view(np.float32)[:n]
            return out
        fn = self.to_float(t)
        fn(raw.ctypes.data, out.ctypes.data, n)
        if t not in self._checked:
            block, size = GGML_QUANT_SIZES[t]
            nb = min(n // block, 4096)
            ref = np.asarray(quants.dequantize(raw[: nb * size].reshape(nb, size), t), dtype=np.float32).ravel()
            if not np.array_equal(ref, out[: nb * block], equal_nan=True):
                bad = int(np.count_nonzero(ref != out[: nb * block]))
                raise RuntimeError(f"libggml's {t.name} dequantization differs from gguf-py's on {bad} of {nb * block} values")
            self._checked.add(t)
        return out

    def roundtrip(self, x: np.ndarray, qtype: str) -> tuple[np.ndarray, int]:
        """Quantize the matrix x to qtype with ggml_quantize_chunk (no
        importance matrix) and decode it again; also return the bytes."""
        from gguf import GGMLQuantizationType

        t = GGMLQuantizationType[qtype]
        if self.lib.ggml_quantize_requires_imatrix(int(t)):
            raise SystemExit(f"{qtype} needs an importance matrix")
        x = np.ascontiguousarray(x, dtype=np.float32)
        rows, cols = x.shape
        self.lib.ggml_quantize_init(int(t))
        dst = np.zeros(x.nbytes + 1024, dtype=np.uint8)
        n = self.lib.ggml_quantize_chunk(int(t), x.ctypes.data, dst.ctypes.data, 0, rows, cols, None)
        return self.dequantize(dst[:n], t, rows * cols).reshape(rows, cols), int(n)
