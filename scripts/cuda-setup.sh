#!/usr/bin/env bash
# A CUDA build toolchain for `--features cuda` from PyPI alone, on a machine without a GPU or a CUDA install
# (CI, a developer's laptop): nvcc, the CUDA runtime headers and libcudart from NVIDIA's CUDA 13.0 wheels in a venv,
# plus link-only stub libraries. Idempotent: the first run takes ~15 s and ~300 MB, a rerun ~0.1 s and prints no log.
#
#   eval "$(scripts/cuda-setup.sh)"        # prints `export ...` lines on stdout (logs go to stderr)
#   CUDA_LINK=real eval "$(scripts/cuda-setup.sh)"
#
# Environment:
#   UNIKE_CUDA_CACHE  where the venv and the link directories live (default ${XDG_CACHE_HOME:-$HOME/.cache}/unike-cuda)
#   CUDA_LINK         stub (default): link against generated stubs of libcuda, libnvrtc, libcublas, libcublasLt and
#                     libcurand; the binary links, runs `--help` on a GPU-less box with the stubs on LD_LIBRARY_PATH,
#                     and on a GPU host resolves the real libraries at run time.
#                     real: also install the real nvrtc / cuBLAS / cuRAND wheels (~0.6 GB more) and link against them;
#                     put $CUDA_HOME/lib on LD_LIBRARY_PATH to run (what scripts/gpu-check does). libcuda (the driver)
#                     is never on PyPI: it is a stub in both modes, and the driver's own libcuda.so.1 is used at run time.
#   PYTHON            the interpreter that makes the venv (default python3)
#
# Why CUDA 13 and not nvidia-cuda-nvcc-cu12: the cu12 wheel (12.9.86) ships only ptxas, libnvvm and the crt headers,
# no `nvcc` driver, cicc, cudafe++ or fatbinary, so it cannot compile a .cu at all. The CUDA 13 wheels (nvidia-cuda-nvcc,
# -crt, nvidia-nvvm, -runtime, -cccl) unpack into one tree, site-packages/nvidia/cu13/{bin,include,lib,nvvm}: a normal
# CUDA_HOME. cudarc 0.19 (candle 0.11's) knows CUDA up to 13.4. PTX from CUDA 13.0 needs a driver >= 580 to run.
#
# Link step: candle-core turns on cudarc's `dynamic-linking`, so the final link needs -lcuda -lnvrtc -lcurand -lcublas
# -lcublasLt (and -lcudart from candle-kernels). The stubs export the symbols cudarc declares (taken from cudarc's own
# sources in the cargo registry) with the real sonames. `cargo check` needs only nvcc; `cargo build` needs the libs.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${UNIKE_CUDA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/unike-cuda}"
VENV="$CACHE/venv"
CUDA_LINK="${CUDA_LINK:-stub}"
PY="${PYTHON:-python3}"
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
die() { log "error: $*"; exit 1; }

case "$CUDA_LINK" in
  stub | real) ;;
  *) die "CUDA_LINK must be stub or real, not '$CUDA_LINK'" ;;
esac
for tool in cc g++ nm; do
  command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found (nvcc needs gcc/g++ as its host compiler; apt-get install build-essential)"
done

# 1. The wheels, installed once per package set (a stamp file records it; pip is not even started on a rerun).
pkgs=("${PKGS[@]}")
[ "$CUDA_LINK" = real ] && pkgs+=("${REAL_LIB_PKGS[@]}")
stamp="$VENV/.unike-cuda-packages"
if [ ! -x "$VENV/bin/python" ]; then
  log "creating the venv $VENV"
  mkdir -p "$CACHE"
  "$PY" -m venv "$VENV" >&2 || die "'$PY -m venv' failed (Debian: apt-get install python3-venv)"
fi
have="$(cat "$stamp" 2>/dev/null || true)"
missing=()
for p in "${pkgs[@]}"; do
  [[ " $have " == *" $p "* ]] || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "pip install ${missing[*]}"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${missing[@]}" >&2
  printf '%s\n' "$(echo "$have ${missing[*]}" | xargs)" >"$stamp"
fi
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
CU="$SITE/nvidia/cu13"
[ -x "$CU/bin/nvcc" ] || die "no nvcc at $CU/bin/nvcc (remove $VENV and rerun)"
[ -f "$CU/include/cuda_runtime.h" ] || die "no cuda_runtime.h under $CU/include (remove $VENV and rerun)"

# 2. The link directory: unversioned names for the linker (-lfoo needs libfoo.so). One per mode.
LINK="$CACHE/link-$CUDA_LINK"
mkdir -p "$LINK"
[ -L "$LINK/libcudart.so" ] || ln -sf "$CU/lib/libcudart.so.13" "$LINK/libcudart.so"

# cudarc's sources (the version in Cargo.lock) hold the symbol lists the stubs export.
CUDARC_VERSION="$(awk '/^name = "cudarc"$/ { getline; gsub(/"/, "", $3); print $3; exit }' "$ROOT/Cargo.lock")"
[ -n "$CUDARC_VERSION" ] || die "no cudarc in $ROOT/Cargo.lock"
find_cudarc() {
  local d
  for d in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-"$CUDARC_VERSION"; do
    [ -f "$d/src/driver/sys/mod.rs" ] && { echo "$d"; return 0; }
  done
  return 1
}
if ! CUDARC="$(find_cudarc)"; then
  log "cudarc $CUDARC_VERSION is not in the cargo registry yet: cargo fetch"
  (cd "$ROOT" && cargo fetch --locked) >&2
  CUDARC="$(find_cudarc)" || die "cudarc-$CUDARC_VERSION still missing from the cargo registry after cargo fetch"
fi

mkstub() { # mkstub <cudarc module> <library name> <soname>
  local mod=$1 out=$LINK/lib$2.so soname=$3 src c
  src="$CUDARC/src/$mod/sys/mod.rs"
  if [ ! -f "$out" ] || [ -L "$out" ] || [ "$src" -nt "$out" ]; then
    c="$(mktemp --suffix=.c)"
    grep -oE '^pub unsafe fn \w+\(' "$src" | sed -E 's/^pub unsafe fn (\w+)\(/void \1(void) {}/' | sort -u >"$c"
    rm -f "$out"
    cc -shared -fPIC -Wl,-soname,"$soname" -o "$out" "$c"
    rm -f "$c"
    log "stub $out ($soname, $(nm -D --defined-only "$out" | grep -c ' T ') symbols from cudarc $CUDARC_VERSION)"
  fi
  # The soname too, so that a binary linked here runs `--help` with LD_LIBRARY_PATH=$LINK. Never in real mode: there a
  # GPU host's run time must find the driver's own libcuda.so.1.
  if [ "$CUDA_LINK" = stub ]; then
    [ -L "$LINK/$soname" ] || ln -sf "lib$2.so" "$LINK/$soname"
  fi
}
realso() { # realso <library name> <glob of the versioned file>
  local f
  f="$(compgen -G "$CU/lib/$2" | sort | head -1 || true)"
  [ -n "$f" ] || die "no $2 in $CU/lib"
  [ "$(readlink "$LINK/lib$1.so" 2>/dev/null)" = "$f" ] || ln -sf "$f" "$LINK/lib$1.so"
}
mkstub driver cuda libcuda.so.1 # the driver is never on PyPI: always a stub
if [ "$CUDA_LINK" = real ]; then
  realso nvrtc 'libnvrtc.so.13'
  realso cublas 'libcublas.so.13'
  realso cublasLt 'libcublasLt.so.13'
  realso curand 'libcurand.so.1[0-9]'
else
  mkstub nvrtc nvrtc libnvrtc.so.13
  mkstub cublas cublas libcublas.so.13
  mkstub cublaslt cublasLt libcublasLt.so.13
  mkstub curand curand libcurand.so.10
fi

if [ "${#missing[@]}" -gt 0 ]; then
  log "$("$CU/bin/nvcc" --version | grep -m1 'release')"
  log "ready: eval \"\$(scripts/cuda-setup.sh)\" sets CUDA_HOME=$CU (cargo check/build --features cuda)"
fi

# 3. The environment, as shell that `eval` runs.
q() { printf '%q' "$1"; }
cat <<EOF
export CUDA_HOME=$(q "$CU")
export CUDA_PATH=$(q "$CU")
export CUDA_ROOT=$(q "$CU")
export PATH=$(q "$CU/bin"):\$PATH
export CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-80}
export CUDARC_CUDA_VERSION=13000
export LIBRARY_PATH=$(q "$LINK"):$(q "$CU/lib")\${LIBRARY_PATH:+:\$LIBRARY_PATH}
export UNIKE_CUDA_LINK_DIR=$(q "$LINK")
EOF
