# shellcheck shell=bash
# GPU additions for `./install.sh --gpu`, sourced by install.sh (functions only, nothing runs on source).
#
#   gpu_requirements          the pip lines of requirements-gpu.lock (TensorFlow's CUDA 12 wheels + build headers)
#   gpu_apt_packages          the extra Debian packages the GPU build needs here (clang-19 when there is no nvcc 12)
#   gpu_build_env VENV_PYTHON exports what Horovod's CMake needs to build HOROVOD_GPU_OPERATIONS=NCCL against the
#                             CUDA 12 and NCCL of that venv's nvidia-* wheels; returns 2 with one line if something lacks
#
# The CUDA compiler. PyPI's nvidia-cuda-nvcc-cu12 wheels (every 12.x release) hold ptxas, libnvvm and the crt/
# headers but no nvcc driver (no nvcc, cicc, cudafe++, fatbinary). So:
#   1. a CUDA 12 nvcc on PATH (a site's `module load cuda/12.x`), or HOROVOD_CUDA_HOME/bin/nvcc: used as it is;
#   2. else clang++-19 (Debian 12's clang-19, which knows CUDA up to 12.5) compiles Horovod's few CUDA kernels
#      against a CUDA root assembled from the wheels ($VENV/cuda: headers, ptxas, libdevice, libcudart), with a
#      `fatbinary` made of NVIDIA's libnvfatbin (nvidia-nvfatbin-cu12). An nvcc of another major (CUDA 13) is ignored.
# NCCL is always the wheel's (the one TensorFlow loads). Horovod's library finds it through a RUNPATH relative to
# itself ($ORIGIN/../../nvidia/nccl/lib), as TensorFlow's libraries find theirs; without it `import
# horovod.tensorflow` fails on libnccl.so.2. Its CUDA runtime calls bind to TensorFlow's libcudart stubs (in
# libtensorflow_framework.so.2, which comes first on the link line), on either route: one CUDA runtime per process.
# Call gpu_build_env in the subshell that builds Horovod: it changes PATH on the clang route.

_gpu_say() { printf '[install] %s\n' "$*"; }
_gpu_fail() { printf '[install] error: %s\n' "$*" >&2; return 2; }
_gpu_lock() { printf '%s/requirements-gpu.lock' "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"; }

# The requirement lines of requirements-gpu.lock (comments and blank lines dropped), one per line.
gpu_requirements() {
  local lock
  lock=$(_gpu_lock)
  [ -f "$lock" ] || { _gpu_fail "$lock is missing"; return 2; }
  sed -e 's/[[:space:]]*#.*$//' -e '/^[[:space:]]*$/d' "$lock"
}

# The CUDA 12 nvcc to use, if any: HOROVOD_CUDA_HOME/bin/nvcc, else nvcc on PATH. Prints its path; a CUDA of another
# major is reported on stderr and skipped.
_gpu_site_nvcc() {
  local nvcc release
  for nvcc in ${HOROVOD_CUDA_HOME:+"$HOROVOD_CUDA_HOME/bin/nvcc"} "$(command -v nvcc || true)"; do
    [ -n "$nvcc" ] && [ -x "$nvcc" ] || continue
    grep -qs 'Written by install/gpu.sh' "$nvcc" && continue   # the stub of an earlier clang-route call
    release=$("$nvcc" --version 2>/dev/null | sed -n 's/.*release \([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' || true)
    if [ "${release%%.*}" = 12 ]; then
      printf '%s\n' "$nvcc"
      return 0
    fi
    _gpu_say "ignoring $nvcc (CUDA ${release:-unknown}): TensorFlow 2.18 needs CUDA 12" >&2
  done
  return 1
}

_gpu_clang() { command -v "${HPCTRAIN_CUDA_CLANG:-clang++-19}" || true; }

# Debian packages the GPU build needs on top of install.sh's: clang-19 unless a CUDA 12 nvcc is there.
gpu_apt_packages() {
  _gpu_site_nvcc >/dev/null 2>&1 || [ -n "$(_gpu_clang)" ] || echo clang-19
}

# Assembles $1 (a CUDA 12 root of symlinks into the wheels under $2 = site-packages/nvidia): include/ (all the
# wheels' headers), bin/ptxas, bin/fatbinary (libnvfatbin), nvvm/, lib64/ with the unversioned .so names that
# CMake and the linker look for. $3 is the venv's python (for bin/fatbinary), $4 the CUDA version (12.5.82).
_gpu_assemble_cuda_root() {
  local root=$1 nv=$2 py=$3 version=$4 pkg f name
  rm -rf "$root"
  mkdir -p "$root/bin" "$root/include" "$root/lib64" "$root/nvvm"
  for pkg in "$nv"/*/; do
    for f in "$pkg"include/*; do
      name=${f##*/}
      case $name in __init__.py | __pycache__ | '*') continue ;; esac
      [ -e "$root/include/$name" ] || ln -s "$f" "$root/include/$name"
    done
    for f in "$pkg"lib/lib*.so*; do
      [ -e "$f" ] || continue
      name=${f##*/}
      ln -sf "$f" "$root/lib64/$name"
      ln -sf "$f" "$root/lib64/${name%%.so*}.so"
    done
  done
  ln -s "$nv/cuda_nvcc/bin/ptxas" "$root/bin/ptxas"
  # CMake (3.25) finds the CUDA toolkit of clang through `nvcc -v` (its root) and `nvcc --version`; this nvcc only
  # answers those two. Horovod's build_utils asks `nvcc --help` for nvcc-only flags: it gets nothing, so none.
  cat >"$root/bin/nvcc" <<STUB
#!/bin/sh
# Written by install/gpu.sh: not a compiler. clang compiles for this CUDA $version root (from the wheels); this
# script tells CMake where it is, as nvcc would.
case "\$1" in
  --version) echo "Cuda compilation tools, release ${version%.*}, V$version" ;;
  -v) echo "#\$ TOP=$root"; echo "#\$ NVVMIR_LIBRARY_DIR=$root/nvvm/libdevice" ;;
  *) echo "nvcc: $root has no nvcc (clang compiles CUDA; see install/gpu.sh)" >&2; exit 1 ;;
esac
STUB
  chmod +x "$root/bin/nvcc"
  for f in "$nv"/cuda_nvcc/nvvm/*; do ln -s "$f" "$root/nvvm/${f##*/}"; done
  ln -s lib64 "$root/lib"
  # CMake links clang's CUDA code with -lcudadevrt -lcudart. The device runtime (dynamic parallelism, relocatable
  # device code) is not in the wheels, nor used by Horovod: an empty archive.
  printf '!<arch>\n' >"$root/lib64/libcudadevrt.a"
  { printf '#!%s\n' "$py"; cat <<'EOF'; } >"$root/bin/fatbinary"
# `fatbinary` for clang's CUDA driver (-64 --create OUT --image=profile=sm_NN,file=X | profile=compute_NN,file=Y),
# made of NVIDIA's libnvfatbin (nvidia-nvfatbin-cu12); written by install/gpu.sh.
import ctypes, os, re, sys

lib = ctypes.CDLL(os.path.join(os.path.dirname(os.path.realpath(__file__)), "..", "lib64", "libnvfatbin.so.12"))
lib.nvFatbinGetErrorString.restype = ctypes.c_char_p
options, images, out = [], [], None
args = iter(sys.argv[1:])
for arg in args:
    if arg in ("-64", "-32", "-g", "-c", "-cuda", "--cuda", "-compress-all", "--compress-all"):
        options.append("-" + arg.lstrip("-"))
    elif arg == "--create" or arg.startswith("--create="):
        out = arg.split("=", 1)[1] if "=" in arg else next(args)
    elif arg.startswith(("--image=", "--image3=")):
        spec = dict(kv.split("=", 1) for kv in arg.split("=", 1)[1].split(","))
        if "profile" in spec:
            kind, sm = re.fullmatch(r"(sm|compute)_(\w+)", spec["profile"]).groups()
            kind = "elf" if kind == "sm" else "ptx"
        else:
            kind, sm = spec["kind"], spec["sm"]
        images.append((kind, sm, spec["file"]))
    else:
        sys.exit(f"fatbinary (libnvfatbin): unsupported argument {arg!r}")


def check(rc, what):
    if rc:
        sys.exit(f"fatbinary (libnvfatbin): {what}: {lib.nvFatbinGetErrorString(rc).decode()}")


handle = ctypes.c_void_p()
check(lib.nvFatbinCreate(ctypes.byref(handle), (ctypes.c_char_p * len(options))(*map(str.encode, options)),
                         ctypes.c_size_t(len(options))), "options " + " ".join(options))
for kind, sm, path in images:
    with open(path, "rb") as f:
        data = f.read()
    name = os.path.basename(path).encode()
    if kind == "elf":
        check(lib.nvFatbinAddCubin(handle, data, ctypes.c_size_t(len(data)), sm.encode(), name), f"{path} (sm_{sm})")
    else:
        data += b"\0"
        check(lib.nvFatbinAddPTX(handle, data, ctypes.c_size_t(len(data)), sm.encode(), name, b""),
              f"{path} (compute_{sm})")
size = ctypes.c_size_t()
check(lib.nvFatbinSize(handle, ctypes.byref(size)), "size")
buffer = ctypes.create_string_buffer(size.value)
check(lib.nvFatbinGet(handle, buffer), "get")
with open(out, "wb") as f:
    f.write(buffer.raw)
lib.nvFatbinDestroy(ctypes.byref(handle))
EOF
  chmod +x "$root/bin/fatbinary"
}

# The link-time names of the wheels' NCCL (libnccl.so, which FindNCCL looks for; the wheel has libnccl.so.2 only).
_gpu_nccl_dev() {
  mkdir -p "$1/lib64"
  ln -sf "$2/nccl/lib/libnccl.so.2" "$1/lib64/libnccl.so.2"
  ln -sf libnccl.so.2 "$1/lib64/libnccl.so"
}

# Exports the Horovod GPU build environment for the venv of python $1 (its nvidia-* wheels installed).
gpu_build_env() {
  local py=${1:?usage: gpu_build_env VENV_PYTHON} venv site nv root archs nvcc clang release p nccl mpi_dirs rpath
  local runtime=
  [ -x "$py" ] || { _gpu_fail "no python at $py"; return 2; }
  venv=$("$py" -c 'import sys; print(sys.prefix)') || { _gpu_fail "$py does not run"; return 2; }
  [ -f "$venv/pyvenv.cfg" ] || { _gpu_fail "$py is not the python of a venv"; return 2; }
  site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  nv=$site/nvidia
  root=$venv/cuda
  for p in nccl/include/nccl.h nccl/lib/libnccl.so.2 cuda_runtime/lib/libcudart.so.12; do
    [ -e "$nv/$p" ] || { _gpu_fail "no $p in $nv: pip install -r requirements-gpu.lock into $venv first"; return 2; }
  done
  # TensorFlow's own list (sm_60 sm_70 sm_80 sm_89 compute_90): kernels for the GPUs TensorFlow runs on.
  archs=$("$py" -c 'import tensorflow as tf; print(",".join(a.split("_")[1] for a in
    tf.sysconfig.get_build_info()["cuda_compute_capabilities"]))' 2>/dev/null) || archs=
  [ -n "$archs" ] || { _gpu_fail "TensorFlow in $venv is not a CUDA build (tf.sysconfig.get_build_info())"; return 2; }
  nccl=$(sed -n 's/^#define NCCL_\(MAJOR\|MINOR\|PATCH\)[[:space:]]*\([0-9]*\).*/\2/p' "$nv/nccl/include/nccl.h" | paste -sd.)
  rm -rf "$root"

  if nvcc=$(_gpu_site_nvcc); then
    release=$("$nvcc" --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p')
    # Its root as CMake finds it (nvcc -v tells TOP; a wrapper script elsewhere on PATH still leads there).
    HOROVOD_CUDA_HOME=$("$nvcc" -v __hpctrain_nothing 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n 1 || true)
    HOROVOD_CUDA_HOME=$(cd "${HOROVOD_CUDA_HOME:-$(dirname "$(readlink -f "$nvcc")")/..}" && pwd)
    export HOROVOD_CUDA_HOME CUDA_HOME=$HOROVOD_CUDA_HOME CUDAToolkit_ROOT=$HOROVOD_CUDA_HOME
    export HOROVOD_BUILD_CUDA_CC_LIST=${HOROVOD_BUILD_CUDA_CC_LIST:-$archs}
    unset CUDACXX CUDAARCHS
    HPCTRAIN_GPU_BUILD="nvcc $release ($HOROVOD_CUDA_HOME), NCCL $nccl (wheel)"
    _gpu_say "GPU build: nvcc $release of the site ($HOROVOD_CUDA_HOME), NCCL $nccl of the wheels"
  else
    clang=$(_gpu_clang)
    [ -n "$clang" ] || {
      _gpu_fail "no CUDA 12 compiler: module load cuda/12.x (nvcc), or apt-get install clang-19"
      return 2
    }
    for p in cuda_nvcc/bin/ptxas cuda_nvcc/include/crt/host_runtime.h cuda_runtime/include/cuda_runtime.h \
      cuda_cccl/include/nv/target curand/include/curand_mtgp32_kernel.h nvfatbin/lib/libnvfatbin.so.12; do
      [ -e "$nv/$p" ] || { _gpu_fail "no $p in $nv: pip install -r requirements-gpu.lock into $venv"; return 2; }
    done
    release=$("$py" -c 'import importlib.metadata as m; print(m.version("nvidia-cuda-nvcc-cu12"))')
    _gpu_assemble_cuda_root "$root" "$nv" "$py" "$release"
    runtime=Shared   # the wheels have no libcudart_static.a
    # Horovod takes HOROVOD_CUDA_HOME/bin/nvcc as its CUDA compiler: left unset, so that CMake takes CUDACXX.
    unset HOROVOD_CUDA_HOME HOROVOD_BUILD_CUDA_CC_LIST
    # bin/ first on PATH: CMake and Horovod's build_utils look for nvcc there before /usr/local/cuda.
    export CUDA_HOME=$root CUDA_PATH=$root CUDAToolkit_ROOT=$root CUDACXX=$clang
    case ":$PATH:" in *":$root/bin:"*) ;; *) export PATH=$root/bin:$PATH ;; esac
    export CUDAARCHS=${CUDAARCHS:-${archs//,/-real;}}   # SASS for each, and PTX of the newest as well
    # What Horovod gives nvcc (-O3 -Xcompiler -fPIC; its CUDA RelWithDebInfo flags are empty).
    case " ${CUDAFLAGS:-} " in *" -Wno-unknown-cuda-version "*) ;;
      *) export CUDAFLAGS="${CUDAFLAGS:+$CUDAFLAGS }-O3 -fPIC -Wno-unknown-cuda-version" ;; esac
    HPCTRAIN_GPU_BUILD="$("$clang" --version | head -n 1), CUDA $release (wheels), NCCL $nccl (wheel)"
    _gpu_say "GPU build: no CUDA 12 nvcc, so ${clang##*/} with CUDA $release of the wheels ($root), NCCL $nccl of the wheels"
  fi
  _gpu_nccl_dev "$root" "$nv"

  # What no environment variable reaches goes into a toolchain file (CMAKE_TOOLCHAIN_FILE, CMake >= 3.21): the
  # shared CUDA runtime on the clang route; a RUNPATH relative to horovod/tensorflow/mpi_lib*.so (the wheels' NCCL
  # and libcudart), then MPI's library folders, and no path of the build venv (the wheel is cached and installed
  # into other venvs).
  mpi_dirs=$(mpicc --showme:libdirs 2>/dev/null || mpicc -show 2>/dev/null | tr ' ' '\n' | sed -n 's/^-L//p' || true)
  rpath="\\\$ORIGIN/../../nvidia/nccl/lib;\\\$ORIGIN/../../nvidia/cuda_runtime/lib"  # \$ for CMake
  for p in $mpi_dirs; do rpath+=";$p"; done
  {
    echo "# Written by install/gpu.sh for the Horovod GPU build: $HPCTRAIN_GPU_BUILD"
    [ -z "$runtime" ] || echo "set(CMAKE_CUDA_RUNTIME_LIBRARY $runtime)"
    echo 'set(CMAKE_BUILD_WITH_INSTALL_RPATH ON)'
    echo "set(CMAKE_INSTALL_RPATH \"$rpath\")"
  } >"$root/horovod-build.cmake"
  export CMAKE_TOOLCHAIN_FILE=$root/horovod-build.cmake
  export HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_NCCL_LINK=SHARED
  export HOROVOD_NCCL_HOME=$nv/nccl HOROVOD_NCCL_INCLUDE=$nv/nccl/include HOROVOD_NCCL_LIB=$root/lib64
  export HPCTRAIN_GPU_BUILD
}
