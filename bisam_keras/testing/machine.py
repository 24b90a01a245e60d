"""What a benchmark ran on: CPU model, vector ISA, oneDNN, threads, versions.

Every benchmark imports this module before TensorFlow, so that `import bisam_keras`
chooses TensorFlow's CPU defaults first (oneDNN on, unless `TF_ENABLE_ONEDNN_OPTS`
is set), stores `record()` in its JSON under `"machine"` and prints `describe()`
above its table:

    from bisam_keras.testing import machine  # first: before TensorFlow starts

    result["machine"] = machine.record()
    print(machine.describe(result["machine"]))

A CPU can be made to look like an older one: `ONEDNN_MAX_CPU_ISA=AVX2` caps
oneDNN's kernels at AVX2 and `ATEN_CPU_CAPABILITY=avx2` PyTorch's; the record
keeps both the CPU's own ISA and the cap, so emulated runs say so.
"""

import os
import platform
import sys

import bisam_keras  # noqa: F401  before TensorFlow: sets the oneDNN default

# Vector ISA families, oldest first, each with a /proc/cpuinfo flag that marks it.
ISA_FLAGS = (("SSE4.1", "sse4_1"), ("AVX", "avx"), ("AVX2", "avx2"), ("AVX-512", "avx512f"))
AMX_FLAGS = ("amx_tile", "amx_bf16", "amx_int8")
# ONEDNN_MAX_CPU_ISA values (SSE41, AVX, AVX2, AVX2_VNNI, AVX512_CORE, ...) by prefix.
CAP_PREFIXES = (("AVX512", "AVX-512"), ("AVX2", "AVX2"), ("AVX", "AVX"), ("SSE", "SSE4.1"))
ISA_ORDER = ("SSE4.1", "AVX", "AVX2", "AVX-512", "AMX")


def cpu_info(path="/proc/cpuinfo"):
    """(model name, set of flags) of the first CPU; from `platform` without /proc."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and value.strip():
                    model = value.strip()
                elif key == "flags":
                    flags = set(value.split())
                if key == "" and flags:  # the end of the first CPU's block
                    break
    except OSError:
        pass
    return model, flags


def vector_isa(flags):
    """The newest vector ISA family that `flags` (/proc/cpuinfo) show, e.g. "AVX-512"."""
    if any(flag in flags for flag in AMX_FLAGS):
        return "AMX"
    best = None
    for name, flag in ISA_FLAGS:
        if flag in flags:
            best = name
    return best


def isa_cap(value):
    """The ISA family a `ONEDNN_MAX_CPU_ISA` value caps oneDNN at; None for no cap."""
    value = (value or "").upper()
    if value in ("", "ALL", "DEFAULT"):
        return None
    if "AMX" in value:
        return "AMX"
    for prefix, name in (
        ("AVX512", "AVX-512"),
        ("AVX2", "AVX2"),
        ("AVX", "AVX"),
        ("SSE", "SSE4.1"),
    ):
        if value.startswith(prefix):
            return name
    return None


def effective_isa(cpu_isa, cap):
    """The newer of the two is out of reach: the older of the CPU's ISA and the cap."""
    if cpu_isa is None or cap is None:
        return cpu_isa
    return min(cpu_isa, cap, key=ISA_ORDER.index)


def onednn_enabled():
    """Whether TensorFlow runs its oneDNN kernels (imports TensorFlow)."""
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())


def record():
    """The machine and the settings a benchmark ran with, for its JSON."""
    import keras
    import tensorflow as tf

    model, flags = cpu_info()
    cpu_isa = vector_isa(flags)
    cap_variable = os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA"))
    cap = isa_cap(cap_variable)
    effective = effective_isa(cpu_isa, cap)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count()
    result = {
        "cpu_model": model,
        "cores": cores,
        "vector_isa": cpu_isa,
        "avx2": "avx2" in flags,
        "avx512": "avx512f" in flags,
        "avx512_vnni": "avx512_vnni" in flags,
        "amx": any(flag in flags for flag in AMX_FLAGS),
        "onednn_max_cpu_isa": cap_variable,
        "effective_isa": effective,
        "emulated": effective != cpu_isa,  # a cap below the CPU's own ISA
        "onednn": onednn_enabled(),
        "tf_enable_onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        # 0 means TensorFlow's own choice: a pool as large as the machine's cores.
        "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "gpus": [d.name for d in tf.config.list_logical_devices("GPU")],
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "bisam_keras": bisam_keras.__version__,
        "load_average_1_5_15_min": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        result.update(
            torch=torch.__version__,
            torch_threads=torch.get_num_threads(),
            torch_interop_threads=torch.get_num_interop_threads(),
            torch_cpu_capability=torch.backends.cpu.get_cpu_capability(),
            aten_cpu_capability=os.environ.get("ATEN_CPU_CAPABILITY"),
        )
        torch_isa = effective_isa(cpu_isa, isa_cap(os.environ.get("ATEN_CPU_CAPABILITY")))
        result["emulated"] = result["emulated"] or torch_isa != cpu_isa
    return result


def describe(machine):
    """One line for a table's header, e.g. "AMD EPYC, 2 cores, AVX-512, oneDNN on, ..."."""
    isa = machine["vector_isa"] or "unknown ISA"
    if machine["effective_isa"] != machine["vector_isa"]:
        isa = f"{isa} capped at {machine['effective_isa']} (ONEDNN_MAX_CPU_ISA, emulated)"
    threads = "/".join(
        str(machine[f"tf_{kind}_op_threads"] or "default") for kind in ("intra", "inter")
    )
    parts = [
        machine["cpu_model"],
        f"{machine['cores']} cores",
        isa,
        f"oneDNN {'on' if machine['onednn'] else 'off'}",
        f"TF threads intra/inter {threads}",
    ]
    if "torch" in machine:
        parts.append(
            f"torch {machine['torch']} threads {machine['torch_threads']}, "
            f"kernels {machine['torch_cpu_capability']}"
            + (" (ATEN_CPU_CAPABILITY, emulated)" if machine["aten_cpu_capability"] else "")
        )
    parts.append(f"TF {machine['tensorflow']}")
    return "Machine: " + ", ".join(parts)
