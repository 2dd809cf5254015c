"""A GGUF file's tensors and scalar metadata, memory-mapped.

gguf-py's GGUFReader builds a numpy view of every part of every metadata
field: for Qwen2.5-Coder-1.5B (151,936 tokens and as many merges) that takes
15-30 s per file, and the benchmark opens each of its files at least once.
This reader walks the metadata with struct (arrays are skipped, only their
element type and count kept) and maps the tensor data with numpy, in well
under a second. The type table (block size, bytes per block) is gguf-py's.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC = b"GGUF"
# GGUF metadata value types: struct format of the scalar ones.
SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9


class GGUFError(ValueError):
    """The file is not a GGUF file this reader understands."""


@dataclass(frozen=True)
class GGUFArray:
    """A metadata array: its element type and count (values not read)."""

    type: int
    count: int


@dataclass
class Tensor:
    name: str
    tensor_type: object  # gguf.GGMLQuantizationType
    shape: list  # ne[0], ne[1], ... (gguf-py's order: row length first)
    n_elements: int
    n_bytes: int
    data: np.ndarray  # F32: float32, F16: float16, others: raw uint8; 1-D, memory-mapped


class GGUFFile:
    """Open path (read only) and parse its header, metadata and tensor infos."""

    def __init__(self, path):
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        self.path = Path(path)
        with open(self.path, "rb") as f:
            size = f.seek(0, 2)
            if size < 24:
                raise GGUFError(f"{self.path}: {size} bytes, too short for a GGUF header")
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        buf = self._map
        self.pos = 0
        if bytes(buf[:4]) != MAGIC:
            raise GGUFError(f"{self.path}: not a GGUF file (magic {bytes(buf[:4])!r})")
        self.version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
        if self.version not in (2, 3):
            raise GGUFError(f"{self.path}: GGUF version {self.version}, this reader knows 2 and 3")
        self.pos = 24
        self.fields: dict = {}
        for _ in range(n_kv):
            key = self._string()
            vtype = self._unpack("<I")
            self.fields[key] = self._value(vtype)
        infos = []
        for _ in range(n_tensors):
            name = self._string()
            n_dims = self._unpack("<I")
            if n_dims > 8:
                raise GGUFError(f"{self.path}: tensor {name!r} has {n_dims} dimensions")
            ne = [self._unpack("<Q") for _ in range(n_dims)]
            ty, off = self._unpack("<I"), self._unpack("<Q")
            infos.append((name, ne, ty, off))
        align = self.fields.get("general.alignment", 32)
        if not isinstance(align, int) or align <= 0 or align & (align - 1):
            raise GGUFError(f"{self.path}: general.alignment {align!r} is not a power of two")
        start = (self.pos + align - 1) // align * align
        self.tensors: list = []
        for name, ne, ty, off in infos:
            try:
                qt = GGMLQuantizationType(ty)
            except ValueError:
                raise GGUFError(f"{self.path}: tensor {name!r} has unknown type {ty}") from None
            block, bsize = GGML_QUANT_SIZES[qt]
            n = int(np.prod(ne, dtype=np.int64)) if ne else 1
            if n % block:
                raise GGUFError(f"{self.path}: tensor {name!r} of {n} elements is not whole {qt.name} blocks of {block}")
            nbytes = n // block * bsize
            a = start + off
            if off % align or a + nbytes > size:
                raise GGUFError(f"{self.path}: tensor {name!r} at {a}+{nbytes} lies outside the file ({size} bytes) or is misaligned")
            dtype = {GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16}.get(qt, np.uint8)
            data = np.frombuffer(buf, dtype=np.uint8, count=nbytes, offset=a).view(dtype)
            self.tensors.append(Tensor(name, qt, ne, n, nbytes, data))

    def _need(self, n: int) -> None:
        if n < 0 or self.pos + n > len(self._map):
            raise GGUFError(f"{self.path}: metadata runs past the end of the file at byte {self.pos}")

    def _unpack(self, fmt: str):
        n = struct.calcsize(fmt)
        self._need(n)
        (v,) = struct.unpack_from(fmt, self._map, self.pos)
        self.pos += n
        return v

    def _string(self) -> str:
        n = self._unpack("<Q")
        self._need(n)
        s = bytes(self._map[self.pos : self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return s

    def _skip_string(self) -> None:
        n = self._unpack("<Q")
        self._need(n)
        self.pos += n

    def _value(self, vtype: int):
        if vtype in SCALAR:
            return self._unpack(SCALAR[vtype])
        if vtype == STRING:
            return self._string()
        if vtype == ARRAY:
            etype, count = self._unpack("<I"), self._unpack("<Q")
            if etype in SCALAR:
                n = struct.calcsize(SCALAR[etype]) * count
                self._need(n)
                self.pos += n
            elif etype == STRING:
                for _ in range(count):
                    self._skip_string()
            elif etype == ARRAY:
                for _ in range(count):
                    self._value(ARRAY)
            else:
                raise GGUFError(f"{self.path}: array of unknown value type {etype} at byte {self.pos}")
            return GGUFArray(etype, count)
        raise GGUFError(f"{self.path}: unknown metadata value type {vtype} at byte {self.pos}")
