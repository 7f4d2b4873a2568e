#!/usr/bin/env bash
# Builds an hpctrain image with Apptainer (or SingularityCE) from containers/hpctrain-{gpu,cpu}.def.
#   containers/build.sh gpu|cpu [OUT.sif]      (default OUT: hpctrain-gpu.sif / hpctrain-cpu.sif)
# Runs as root, or else with --fakeroot. Needs network access to Docker Hub, PyPI and the distribution's
# package mirrors; the GPU image also fetches the Open MPI source.
set -euo pipefail

if [ $# -lt 1 ] || [ $# -gt 2 ] || { [ "$1" != gpu ] && [ "$1" != cpu ]; }; then
  echo "usage: containers/build.sh gpu|cpu [OUT.sif]" >&2
  exit 2
fi
builder=$(command -v apptainer || command -v singularity) || {
  echo "containers/build.sh: neither apptainer nor singularity is on PATH; install Apptainer to build images" >&2
  exit 2
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${2:-hpctrain-$1.sif}
[[ $out == /* ]] || out=$PWD/$out
args=(build)
[ "$EUID" = 0 ] || args+=(--fakeroot)

cd "$here/.."  # the definitions' %files paths are relative to the project root
exec "$builder" "${args[@]}" "$out" "$here/hpctrain-$1.def"
