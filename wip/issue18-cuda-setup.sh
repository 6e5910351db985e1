#!/usr/bin/env bash
# Idempotent: a GPU-less CUDA build toolchain for `cargo build -p unike-cli --features cuda`
# (candle 0.11.1 -> candle-kernels/cudaforge 0.1.6 + cudarc 0.19.10), all from PyPI.
#
# Usage:  eval "$(bash cuda-setup.sh)"      # prints `export ...` lines on stdout, logs on stderr
#
# Why CUDA 13 and not nvidia-cuda-nvcc-cu12: the cu12 wheel (12.9.86) ships only ptxas,
# libnvvm and crt headers -- no `nvcc` driver, no cicc, cudafe++, fatbinary -- so it cannot
# compile .cu at all. The CUDA 13 wheels (nvidia-cuda-nvcc, -crt, nvidia-nvvm, -runtime,
# -cccl) unpack into one tree, site-packages/nvidia/cu13/{bin,include,lib,nvvm}, which is a
# normal CUDA_HOME layout. cudarc 0.19.10 knows CUDA up to 13.4; 13.0 is pinned here.
#
# Link step: candle-core turns on cudarc's `dynamic-linking`, so the final link needs
# -lcuda -lnvrtc -lcurand -lcublas -lcublasLt (plus -lcudart from candle-kernels).
# libcudart is real (runtime wheel). The driver (libcuda) is never on PyPI, and cuBLAS is ~0.5 GB,
# so by default link-only STUB libraries with the right sonames are generated from cudarc's own
# symbol lists. The binary then links and is portable: on a GPU host the real libcuda.so.1,
# libcublas.so.13 ... are resolved at run time (they must be on LD_LIBRARY_PATH there).
# CUDA_LINK=real installs the real nvrtc/cublas/curand wheels instead of stubs (libcuda stays a stub).
set -euo pipefail

VENV=${CUDA_VENV:-/work/runs/cuda-venv}
CUDA_LINK=${CUDA_LINK:-stub}
PY=${PYTHON:-python3}
PKGS=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85
)
REAL_LIB_PKGS=(
  nvidia-cuda-nvrtc==13.0.88
  nvidia-cublas==13.0.2.14
  nvidia-curand==10.4.0.35
)

log() { echo "[cuda-setup] $*" >&2; }

[ -x "$VENV/bin/python" ] || { log "creating venv $VENV"; "$PY" -m venv "$VENV"; }
pkgs=("${PKGS[@]}")
[ "$CUDA_LINK" = real ] && pkgs+=("${REAL_LIB_PKGS[@]}")
log "pip install ${pkgs[*]}"
"$VENV/bin/pip" install -q --disable-pip-version-check "${pkgs[@]}" >&2

SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
CU=$SITE/nvidia/cu13
[ -x "$CU/bin/nvcc" ] || { log "no nvcc at $CU/bin/nvcc"; exit 1; }

# Link directory: unversioned names for the linker (-lfoo needs libfoo.so).
LINK=$VENV/cuda-link
mkdir -p "$LINK"
ln -sf "$CU/lib/libcudart.so.13" "$LINK/libcudart.so"

# cudarc sources hold the symbol lists the stubs must export.
CUDARC=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.10 2>/dev/null | head -1 || true)
if [ -z "$CUDARC" ]; then
  log "cudarc-0.19.10 not in the cargo registry: run 'cargo fetch' in the workspace first"; exit 1
fi

mkstub() { # mkstub <cudarc module> <lib name> <soname>
  local mod=$1 lib=$2 soname=$3 out=$LINK/lib$2.so
  [ -f "$out" ] && [ "$out" -nt "$CUDARC/src/$mod/sys/mod.rs" ] && return 0
  local c; c=$(mktemp --suffix=.c)
  grep -oE '^pub unsafe fn \w+\(' "$CUDARC/src/$mod/sys/mod.rs" | sed -E 's/^pub unsafe fn (\w+)\(/void \1(void) {}/' | sort -u > "$c"
  cc -shared -fPIC -Wl,-soname,"$soname" -o "$out" "$c"
  rm -f "$c"
  log "stub $out ($soname, $(grep -c . < <(nm -D --defined-only "$out")) symbols)"
}
mkstub driver cuda libcuda.so.1          # the driver is never on PyPI: always a stub
if [ "$CUDA_LINK" = real ]; then
  ln -sf "$CU/lib/libnvrtc.so.13"    "$LINK/libnvrtc.so"
  ln -sf "$CU/lib/libcublas.so.13"   "$LINK/libcublas.so"
  ln -sf "$CU/lib/libcublasLt.so.13" "$LINK/libcublasLt.so"
  ln -sf "$(ls "$CU"/lib/libcurand.so.* | head -1)" "$LINK/libcurand.so"
else
  mkstub nvrtc    nvrtc    libnvrtc.so.13
  mkstub cublas   cublas   libcublas.so.13
  mkstub cublaslt cublasLt libcublasLt.so.13
  mkstub curand   curand   libcurand.so.10
fi

log "$("$CU/bin/nvcc" --version | tail -2 | head -1)"
cat <<EOF
export CUDA_HOME=$CU
export CUDA_PATH=$CU
export CUDA_ROOT=$CU
export PATH=$CU/bin:\$PATH
export CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-80}
export CUDARC_CUDA_VERSION=13000
export LIBRARY_PATH=$LINK:$CU/lib\${LIBRARY_PATH:+:\$LIBRARY_PATH}
EOF
