#!/usr/bin/env bash
# Sets up everything hpctrain needs on a Debian 12 machine, idempotently:
#   1. system packages (apt): Open MPI + headers, cmake, g++ for the Horovod build;
#      Slurm + munge for the test suite (skip with HPCTRAIN_NO_SLURM=1, e.g. in images);
#   2. the virtual environment .venv (or $HPCTRAIN_VENV) with the exact versions of
#      requirements.lock, Horovod 0.28.1 built from source against that TensorFlow and
#      Open MPI, and hpctrain itself (editable).
# A second run on a ready machine only compares a stamp and returns within seconds.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VENV=${HPCTRAIN_VENV:-$ROOT/.venv}
WHEELS=${HPCTRAIN_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hpctrain/wheels}
HOROVOD_VERSION=0.28.1

say() { printf '[install] %s\n' "$*"; }
die() { printf '[install] error: %s\n' "$*" >&2; exit 1; }
trap 'die "step failed at line $LINENO (see the output above)"' ERR

apt_packages=(openmpi-bin libopenmpi-dev cmake g++ make)
[ "${HPCTRAIN_NO_SLURM:-0}" = 1 ] || apt_packages+=(slurm-wlm munge)
command -v python3.11 >/dev/null || apt_packages+=(python3 python3-venv python3-dev)

missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "missing system packages (${missing[*]}): run as root or install them with apt-get"
  say "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  say "system packages present"
fi

PYTHON=$(command -v python3.11 || command -v python3)
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || die "$PYTHON is not Python 3.11"

stamp_key=$(cat "$ROOT/install.sh" "$ROOT/requirements.lock" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)
stamp=$VENV/.hpctrain-stamp
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$stamp_key" ]; then
  say "$VENV is up to date ($stamp_key)"
  exit 0
fi

start=$SECONDS
say "creating $VENV with $PYTHON"
"$PYTHON" -m venv --clear "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check --quiet)
say "pip install -r requirements.lock"
"${pip[@]}" install -r "$ROOT/requirements.lock"

# Horovod ships as source only. Its build must see the installed TensorFlow (no build
# isolation); the wheel is cached under a key of what it was built against, so a new venv reuses it.
build_key=$( { grep -i '^tensorflow==' "$ROOT/requirements.lock"; "$PYTHON" -V; mpirun --version | head -n 1;
               env | grep '^HOROVOD_GPU' | sort || true; } | sha256sum | cut -c1-16)
wheel_dir=$WHEELS/$build_key
if ! ls "$wheel_dir"/horovod-$HOROVOD_VERSION-*.whl >/dev/null 2>&1; then
  say "building horovod==$HOROVOD_VERSION (TensorFlow + MPI + Gloo, a few minutes)"
  mkdir -p "$wheel_dir"
  HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_MPI=1 HOROVOD_WITH_GLOO=1 \
  HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
    "${pip[@]}" wheel --no-deps --no-build-isolation --no-cache-dir -w "$wheel_dir" "horovod==$HOROVOD_VERSION"
fi
say "installing horovod from $wheel_dir"
"${pip[@]}" install --no-deps "$wheel_dir"/horovod-$HOROVOD_VERSION-*.whl
"${pip[@]}" install --no-deps --no-build-isolation -e "$ROOT"
"$VENV/bin/python" -m pip --disable-pip-version-check check

say "checking imports"
"$VENV/bin/python" - <<'EOF'
from hpctrain import compat  # sets TF_USE_LEGACY_KERAS before TensorFlow loads, without its start-up noise
tf, tf_keras, hvd = compat.tf(), compat.keras(), compat.horovod_keras()
import horovod, mpi4py, h5py
assert hvd.mpi_built() and hvd.gloo_built(), "Horovod lacks MPI or Gloo"
assert tf.keras.__name__.startswith("tf_keras"), tf.keras.__name__
print(f"[install] TensorFlow {tf.__version__}, tf_keras {tf_keras.__version__}, "
      f"Horovod {horovod.__version__} (MPI, Gloo), mpi4py {mpi4py.__version__}, h5py {h5py.__version__}")
EOF
echo "$stamp_key" > "$stamp"
say "done in $((SECONDS - start)) s: $VENV"
