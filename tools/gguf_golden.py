#!/usr/bin/env python3
"""Golden files for formats/gguf, produced by the reference `gguf` package.

The Go tests in formats/gguf compare their decoders, quantizers, reader and
block-size table against these files, so a mistake must be made twice, in two
independent implementations, before it goes unnoticed.

Regenerate (the output is deterministic for a given gguf/numpy version):

    python3 -m venv /tmp/goldenvenv
    /tmp/goldenvenv/bin/pip install -r tools/requirements-golden.txt
    /tmp/goldenvenv/bin/python tools/gguf_golden.py

It writes, under formats/gguf/testdata/golden/:

    <TYPE>.bin, <TYPE>.f32   random valid blocks of a ggml type and their
                             values from gguf.quants.dequantize (float32 LE)
    quant_<TYPE>.in.f32,     float32 input and the bytes gguf.quants.quantize
    quant_<TYPE>.bin         makes of it (Q8_0, Q4_0, Q4_1)
    sizes.json               gguf.GGML_QUANT_SIZES: elements and bytes per block
    small.gguf, small.json   a small GGUF file written by gguf.GGUFWriter with
                             every metadata value type, and what it holds
"""

import hashlib
import importlib.metadata
import json
import os
import sys

import numpy as np

import gguf
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V

SEED = 20250201
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "formats", "gguf", "testdata", "golden")

# Byte offsets of the binary16 scale fields ("d", "dmin", "m") in each block
# (ggml-common.h). They are overwritten with sane finite values; every other
# byte of a block is random.
SCALE_FIELDS = {
    T.Q4_0: [0],
    T.Q4_1: [0, 2],
    T.Q5_0: [0],
    T.Q5_1: [0, 2],
    T.Q8_0: [0],
    T.Q2_K: [80, 82],
    T.Q3_K: [108],
    T.Q4_K: [0, 2],
    T.Q5_K: [0, 2],
    T.Q6_K: [208],
    T.IQ4_NL: [0],
}

# Scale values used for the first blocks: zero, a binary16 subnormal, a
# negative value and the largest binary16 value. Later blocks draw
# log-uniform magnitudes in [2^-14, 2^2] with a random sign.
SPECIAL_SCALES = [0.0, 2.0**-20, -0.5, 65504.0]


def scales(rng, n):
    out = list(SPECIAL_SCALES[:n])
    while len(out) < n:
        mag = 2.0 ** rng.uniform(-14, 2)
        out.append(mag if rng.integers(2) else -mag)
    return np.array(out, dtype=np.float16)


def write(name, data):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)


def dequant_goldens(rng):
    for qtype, fields in SCALE_FIELDS.items():
        block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
        n = 8 if block_elems == 32 else 4
        blocks = rng.integers(0, 256, size=(n, block_bytes), dtype=np.uint8)
        for off in fields:
            blocks[:, off : off + 2] = scales(rng, n).view(np.uint8).reshape(n, 2)
        raw = blocks.reshape(-1)
        vals = gguf.quants.dequantize(raw, qtype).astype("<f4")
        assert vals.size == n * block_elems and np.all(np.isfinite(vals)), qtype.name
        write(qtype.name + ".bin", raw.tobytes())
        write(qtype.name + ".f32", vals.tobytes())

    # Plain float types: every bit pattern is valid, NaN and Inf included.
    f16 = rng.integers(0, 1 << 16, size=256, dtype=np.uint16)
    f16[:4] = [0x0000, 0x8000, 0x0001, 0x7C00]  # zeros, smallest subnormal, +Inf
    bf16 = rng.integers(0, 1 << 16, size=256, dtype=np.uint16)
    f32 = (rng.standard_normal(64) * 10.0).astype("<f4")
    for qtype, raw in ((T.F16, f16.astype("<u2").view(np.uint8)), (T.BF16, bf16.astype("<u2").view(np.uint8)), (T.F32, f32.view(np.uint8))):
        vals = gguf.quants.dequantize(raw, qtype).astype("<f4")
        write(qtype.name + ".bin", raw.tobytes())
        write(qtype.name + ".f32", vals.tobytes())


def quant_goldens(rng):
    for qtype in (T.Q8_0, T.Q4_0, T.Q4_1):
        x = rng.standard_normal((8, 32)).astype(np.float32)
        x *= (2.0 ** rng.uniform(-8, 8, size=(8, 1))).astype(np.float32)
        x[1] = 0.0  # all-zero block: d = 0
        x[2, 5] = 1000.0  # one outlier
        x[3] = np.abs(x[3])  # all positive: Q4_1 min > 0, Q4_0 max > 0
        x[4] = -np.abs(x[4])
        x = x.reshape(-1).astype("<f4")
        q = gguf.quants.quantize(x, qtype)
        write("quant_" + qtype.name + ".in.f32", x.tobytes())
        write("quant_" + qtype.name + ".bin", q.tobytes())


def sizes():
    table = {t.name: {"type": int(t), "block_elems": e, "block_bytes": b} for t, (e, b) in gguf.GGML_QUANT_SIZES.items()}
    with open(os.path.join(OUT, "sizes.json"), "w") as f:
        json.dump(table, f, indent=1, sort_keys=True)
        f.write("\n")


def jsonable(value, vtype, sub=None):
    """Describes a value as {"type", "value"} (arrays: "elem" and a list)."""
    if vtype == V.ARRAY:
        items = []
        for item in value:
            t = sub if sub is not None else V.get_type(item)
            items.append(jsonable(item, t))
        elem = sub if sub is not None else V.get_type(value[0])
        return {"type": "ARRAY", "elem": elem.name, "value": items}
    if vtype in (V.FLOAT32,):
        value = float(np.float32(value))
    return {"type": vtype.name, "value": value}


def small_gguf(rng):
    path = os.path.join(OUT, "small.gguf")
    w = gguf.GGUFWriter(path, arch="tpctest")
    kvs = [
        ("general.architecture", "tpctest", V.STRING, None),
        ("test.u8", 200, V.UINT8, None),
        ("test.i8", -100, V.INT8, None),
        ("test.u16", 60000, V.UINT16, None),
        ("test.i16", -30000, V.INT16, None),
        ("test.u32", 4000000000, V.UINT32, None),
        ("test.i32", -2000000000, V.INT32, None),
        ("test.f32", 1.5, V.FLOAT32, None),
        ("test.bool", True, V.BOOL, None),
        ("test.string", "h\u00e9llo, GGUF\n", V.STRING, None),
        ("test.u64", 2**64 - 1, V.UINT64, None),
        ("test.i64", -(2**63), V.INT64, None),
        ("test.f64", -2.25, V.FLOAT64, None),
        ("test.arr.i32", [1, -2, 3], V.ARRAY, None),
        ("test.arr.u64", [0, 2**64 - 1], V.ARRAY, V.UINT64),
        ("test.arr.f32", [0.5, -0.25], V.ARRAY, None),
        ("test.arr.bool", [True, False, True], V.ARRAY, None),
        ("test.arr.str", ["a", "", "b\u00fc"], V.ARRAY, None),
        ("test.arr.nested", [[1, 2], [3], [4, 5, 6]], V.ARRAY, None),
        ("test.arr.nested_str", [["x"], ["y", "z"]], V.ARRAY, None),
    ]
    for key, value, vtype, sub in kvs:
        if key != "general.architecture":
            w.add_key_value(key, value, vtype, sub_type=sub)
    w.add_custom_alignment(64)

    tensors = []

    def add(name, arr, raw_dtype=None, qtype=None):
        if raw_dtype is None:
            w.add_tensor(name, arr)
            qtype = {np.float32: T.F32, np.float16: T.F16, np.int32: T.I32}[arr.dtype.type]
            raw = arr
        else:
            w.add_tensor(name, arr, raw_dtype=raw_dtype)
            raw = arr
        flat = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
        shape = list(gguf.quants.quant_shape_from_byte_shape(arr.shape, raw_dtype) if raw_dtype is not None else arr.shape)
        entry = {"name": name, "type": qtype.name, "shape": shape, "sha256": hashlib.sha256(flat.tobytes()).hexdigest()}
        if qtype != T.I32:
            entry["values"] = [float(v) for v in gguf.quants.dequantize(flat, qtype).reshape(-1)]
        tensors.append(entry)

    add("token_embd.weight", (rng.standard_normal((4, 64)) * 0.1).astype(np.float16))
    q = gguf.quants.quantize(rng.standard_normal((2, 64)).astype(np.float32), T.Q4_0)
    add("blk.0.attn_q.weight", q, raw_dtype=T.Q4_0, qtype=T.Q4_0)
    add("blk.0.attn_norm.weight", rng.standard_normal(64).astype(np.float32))
    q = gguf.quants.quantize(rng.standard_normal((3, 32)).astype(np.float32), T.Q8_0)
    add("blk.0.attn_k.weight", q, raw_dtype=T.Q8_0, qtype=T.Q8_0)
    add("blk.0.pos", np.arange(-2, 3, dtype=np.int32))
    q = gguf.quants.quantize(rng.standard_normal((1, 32)).astype(np.float32), T.Q4_1)
    add("blk.0.attn_v.weight", q, raw_dtype=T.Q4_1, qtype=T.Q4_1)
    add("blk.0.cube", rng.standard_normal((2, 3, 4)).astype(np.float32))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    desc = {
        "version": gguf.GGUF_VERSION,
        "alignment": 64,
        "kv": [dict(key=k, **jsonable(v, t, s)) for k, v, t, s in kvs] + [dict(key="general.alignment", type="UINT32", value=64)],
        "tensors": tensors,
    }
    with open(os.path.join(OUT, "small.json"), "w") as f:
        json.dump(desc, f, indent=1, ensure_ascii=False)
        f.write("\n")


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(SEED)
    dequant_goldens(rng)
    quant_goldens(rng)
    sizes()
    small_gguf(rng)
    print("wrote", os.path.normpath(OUT), "with gguf", importlib.metadata.version("gguf"), "numpy", np.__version__, file=sys.stderr)


if __name__ == "__main__":
    main()
