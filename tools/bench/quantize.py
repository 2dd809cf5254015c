"""Quantize one GGUF file with llama.cpp's calibration-free quantizer.

Usage: python quantize.py SRC.gguf DST.gguf TYPE [THREADS]

TYPE is a llama.cpp file type without the LLAMA_FTYPE_MOSTLY_ prefix, e.g.
Q4_K_M. Run as its own process by run.py so that its wall time and peak RSS
are measured the same way as tpconvert's (wait4 on the child).
"""

import ctypes
import sys


def main(argv: list[str]) -> int:
    if len(argv) not in (4, 5):
        print(__doc__, file=sys.stderr)
        return 2
    src, dst, name = argv[1], argv[2], argv[3].upper()
    threads = int(argv[4]) if len(argv) == 5 else 0

    import llama_cpp  # imported here so that a usage error costs nothing

    ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + name, None)
    if ftype is None:
        print(f"quantize: unknown llama.cpp type {name!r}", file=sys.stderr)
        return 2
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads  # 0: llama.cpp uses all hardware threads
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    if rc != 0:
        print(f"quantize: llama_model_quantize({src} -> {dst}, {name}) returned {rc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
