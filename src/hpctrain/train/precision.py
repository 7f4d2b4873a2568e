"""The precision policy of a run, from train.precision: "fp32"; "mixed" (float16 on GPUs, bfloat16 on CPUs);
or "auto": mixed where the hardware has fast low-precision math (GPUs with tensor cores, compute capability 7.0
or more; CPUs with AMX or AVX512_BF16), float32 elsewhere. The run records the policy it used."""
from pathlib import Path

from hpctrain import compat

FAST_BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})  # /proc/cpuinfo flags
TENSOR_CORES = (7, 0)                                          # the first compute capability with them (Volta)


def cpu_flags(cpuinfo=Path("/proc/cpuinfo")):
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    return frozenset(word for line in text.splitlines() if line.startswith("flags") for word in line.split()[2:])


def choose(setting, gpu_capabilities, flags):
    """The Keras policy name for `setting`, on GPUs of these compute capabilities (none: CPU) with these CPU flags."""
    if setting == "fp32":
        return "float32"
    if gpu_capabilities:
        fast = all(tuple(cc) >= TENSOR_CORES for cc in gpu_capabilities)
        return "mixed_float16" if setting == "mixed" or fast else "float32"
    return "mixed_bfloat16" if setting == "mixed" or FAST_BF16_CPU_FLAGS & flags else "float32"


def apply(setting):
    """Sets the global Keras policy for `setting` on this process's devices; returns its name."""
    tf = compat.tf()
    capabilities = [tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0))
                    for gpu in tf.config.list_physical_devices("GPU")]
    policy = choose(setting, capabilities, cpu_flags())
    compat.keras().mixed_precision.set_global_policy(policy)
    return policy
