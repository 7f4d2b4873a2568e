#!/usr/bin/env bash
# Builds an hpctrain image, then runs its own checks in it (containers/recipe.sh test):
#
#   containers/build.sh cpu|gpu [--engine apptainer|podman|docker] [--out FILE.sif] [--save FILE.tar]
#                               [--base IMAGE|mmdebstrap] [--no-cache]
#
#   --engine apptainer (default): FILE.sif (default ./hpctrain-FLAVOUR.sif) from containers/hpctrain-FLAVOUR.def;
#            as root, or else with --fakeroot. Also `singularity` when apptainer is missing.
#   --engine podman|docker: the image localhost/hpctrain-FLAVOUR from containers/Containerfile;
#            --save FILE.tar also writes it as a docker archive, which `apptainer build x.sif docker-archive://FILE.tar`
#            turns into a SIF at a site.
#   --base   the Debian 12 image to start from (podman/docker; default docker.io/library/debian:12); `mmdebstrap`
#            makes localhost/debian:bookworm from Debian's packages first (root, no registry needed).
# Behind a proxy that re-signs TLS, pip needs the host's CA bundle: $HPCTRAIN_CA_BUNDLE, else $PIP_CERT, else
# $SSL_CERT_FILE is bound into the podman build (never copied into the image).
# Until its checks pass an image exists only under a temporary name: a failed build leaves nothing under the
# final one. Needs the network: Debian's mirrors and PyPI (and Docker Hub for its base image).
set -euo pipefail

self=${BASH_SOURCE[0]}; [[ $self == */* ]] || self=./$self
here=$(cd "${self%/*}" && pwd)  # no external command before the checks: they also run with an empty PATH
root=${here%/*}
fail() { echo "containers/build.sh: $*" >&2; exit 2; }
usage="usage: containers/build.sh cpu|gpu [--engine apptainer|podman|docker] [--out FILE.sif] [--save FILE.tar] [--base IMAGE|mmdebstrap] [--no-cache]"

[ $# -ge 1 ] || fail "$usage"
flavour=$1; shift
case $flavour in cpu|gpu) ;; *) fail "unknown flavour '$flavour' (cpu or gpu); $usage" ;; esac
engine=apptainer out='' save='' base=docker.io/library/debian:12 cache=()
while [ $# -gt 0 ]; do
  case $1 in
    --no-cache) cache=(--no-cache); shift; continue ;;
    --engine|--out|--save|--base) [ $# -ge 2 ] || fail "$1 needs a value; $usage" ;;
    *) fail "unknown option $1; $usage" ;;
  esac
  case $1 in --engine) engine=$2 ;; --out) out=$2 ;; --save) save=$2 ;; --base) base=$2 ;; esac
  shift 2
done
case $engine in
  apptainer) builder=$(command -v apptainer || command -v singularity) \
               || fail "neither apptainer nor singularity is on PATH: install Apptainer, or use --engine podman" ;;
  podman|docker) builder=$(command -v "$engine") || fail "$engine is not on PATH: install it, or choose another --engine" ;;
  *) fail "unknown engine '$engine' (apptainer, podman or docker)" ;;
esac
absolute() { case $1 in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }

# The build context: only what goes into the image (recipe.sh's inputs), never a venv or run folders.
context=$(mktemp -d "${TMPDIR:-/tmp}/hpctrain-image.XXXXXX")
log=$context.log
temps=("$context" "$log") building=''  # removed on the way out, whatever happens
trap 'rm -rf "${temps[@]}"; [ -z "$building" ] || "$builder" rmi -f "$building" >/dev/null 2>&1 || true' EXIT
mkdir -p "$context/containers"
cp -a "$root"/{install.sh,install,pyproject.toml,requirements.lock,requirements-gpu.lock,src} "$context/"
cp -a "$here"/{recipe.sh,Containerfile,"hpctrain-$flavour.def"} "$context/containers/"
find "$context/src" -name __pycache__ -prune -exec rm -rf {} +
rm -rf "$context"/src/*.egg-info

# A failed step: one line for a full disk (exit 2), else the engine's own output above it (exit 1).
step() {
  if "$@" 2>&1 | tee -a "$log"; then return 0; fi
  if grep -qi "no space left on device" "$log"; then fail "no space left on device while building (free some, then rerun)"; fi
  echo "containers/build.sh: '$*' failed (output above)" >&2
  exit 1
}

if [ "$engine" = apptainer ]; then
  out=$(absolute "${out:-hpctrain-$flavour.sif}")
  [ -z "$save" ] || fail "--save is for podman and docker (a .sif is already one file)"
  args=(build); [ "$EUID" = 0 ] || args+=(--fakeroot)
  tmp=$out.part-$$
  temps+=("$tmp")
  cd "$context"  # the definitions' %files paths are relative to it
  step "$builder" "${args[@]}" "${cache[@]/--no-cache/--disable-cache}" "$tmp" "containers/hpctrain-$flavour.def"
  mv -f "$tmp" "$out"
  echo "containers/build.sh: $out"
  exit 0
fi

[ -z "$out" ] || fail "--out is for apptainer; $engine names the image localhost/hpctrain-$flavour"
if [ "$base" = mmdebstrap ]; then
  base=localhost/debian:bookworm
  if ! "$builder" image inspect "$base" >/dev/null 2>&1; then
    command -v mmdebstrap >/dev/null || fail "--base mmdebstrap needs mmdebstrap (apt-get install mmdebstrap)"
    step mmdebstrap --quiet --variant=minbase bookworm "$context/rootfs.tar"
    step "$builder" import "$context/rootfs.tar" "$base"
    rm -f "$context/rootfs.tar"
  fi
fi
image=localhost/hpctrain-$flavour
building=$image:building-$$
ca=${HPCTRAIN_CA_BUNDLE:-${PIP_CERT:-${SSL_CERT_FILE:-}}} with_ca=()
if [ -n "$ca" ] && [ "$engine" = podman ]; then
  [ -f "$ca" ] || fail "the CA bundle $ca does not exist"
  with_ca=(-v "$(absolute "$ca"):/run/hpctrain-ca.pem:ro" --build-arg HPCTRAIN_CA=/run/hpctrain-ca.pem)
fi
step "$builder" build "${cache[@]}" "${with_ca[@]}" --network host --build-arg "BASE=$base" \
  --build-arg "FLAVOUR=$flavour" -f "$context/containers/Containerfile" -t "$building" "$context"
step "$builder" run --rm --network host --entrypoint /opt/hpctrain/src/containers/recipe.sh "$building" "$flavour" test
step "$builder" tag "$building" "$image:latest"
if [ -n "$save" ]; then
  save=$(absolute "$save")
  temps+=("$save.part-$$")
  step "$builder" save -o "$save.part-$$" "$image:latest"  # a docker archive: podman's default, docker's only
  mv -f "$save.part-$$" "$save"
  echo "containers/build.sh: $save"
fi
echo "containers/build.sh: $image ($("$builder" image inspect --format '{{.Size}}' "$image:latest") bytes)"
