#!/usr/bin/env bash
# What an hpctrain image holds, in one place: run by the Apptainer definitions' %post and %test and by the
# Containerfile, inside a Debian 12 root file system with the project under /opt/hpctrain/src.
#
#   recipe.sh cpu|gpu deps      everything but hpctrain itself (./install.sh --deps-only): a layer of its own
#   recipe.sh cpu|gpu install   everything; after `deps`, only hpctrain itself is added (the Containerfile's next
#                               layer, so a change to the code rebuilds only that); Apptainer's %post
#   recipe.sh cpu|gpu test      the image's own checks: Apptainer's %test, run by containers/build.sh after a build
#
# The venv is /opt/hpctrain/venv (on PATH in the image); MPI is Debian's Open MPI 4.1 (PMIx, Slurm, UCX) and
# Slurm stays on the host. The GPU flavour adds TensorFlow's CUDA wheels and Horovod built with NCCL.
set -euo pipefail

SRC=/opt/hpctrain/src
VENV=/opt/hpctrain/venv
usage() { echo "usage: recipe.sh cpu|gpu deps|install|test" >&2; exit 2; }
[ $# = 2 ] || usage
case $1 in cpu) flags=() ;; gpu) flags=(--gpu) ;; *) usage ;; esac
flavour=$1

install() {  # $@: extra install.sh options
  # openssh-client: the agent mpirun starts ranks on other hosts with, when run inside the image
  export DEBIAN_FRONTEND=noninteractive
  dpkg-query -W -f='${Status}' openssh-client 2>/dev/null | grep -q 'install ok installed' || {
    apt-get update -qq && apt-get install -y -qq --no-install-recommends openssh-client ca-certificates >/dev/null; }
  [ -z "${HPCTRAIN_CA:-}" ] || export PIP_CERT=$HPCTRAIN_CA  # a proxy's CA bundle, bound in for the build only
  HPCTRAIN_NO_SLURM=1 HPCTRAIN_WHEEL_CACHE=/tmp/hpctrain-wheels "$SRC/install.sh" --venv "$VENV" "${flags[@]}" "$@"
  rm -rf /tmp/hpctrain-wheels /var/lib/apt/lists/* /root/.cache
}

check() {
  export PATH=$VENV/bin:$PATH
  hpctrain env
  # 2 ranks through the image's own mpirun: Horovod's allreduce over shared memory
  mpirun --allow-run-as-root --oversubscribe --mca btl self,vader -np 2 python -c '
from hpctrain import compat
hvd = compat.horovod_keras(); hvd.init(); tf = compat.tf()
tf.config.set_visible_devices([], "GPU")
s = hvd.allreduce(tf.constant(hvd.rank() + 1.0), op=hvd.Sum)
assert float(s) == 3.0, float(s)
print(f"rank {hvd.rank()}: allreduce {float(s)}", flush=True)'
  if [ "$flavour" = gpu ]; then
    horovodrun --check-build | tee /tmp/check-build.txt
    for what in NCCL MPI Gloo; do
      grep -Eq "\[X\] $what\b" /tmp/check-build.txt || { echo "recipe.sh: Horovod is built without $what" >&2; exit 1; }
    done
  fi
}

case $2 in
  deps) install --deps-only ;;
  install) install ;;
  test) check ;;
  *) usage ;;
esac
