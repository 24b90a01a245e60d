"""TensorFlow's fast CPU kernels by default, chosen before TensorFlow starts.

TensorFlow reads `TF_ENABLE_ONEDNN_OPTS` once, when it is imported. Unset, it turns
its oneDNN kernels on only on CPUs with AVX-512 VNNI-class features; on AVX2-only
CPUs (AMD EPYC and Ryzen, Intel before Ice Lake) it runs Eigen's convolutions,
which train a CIFAR ResNet about 2x slower (see docs/benchmarks.md). Imported
before TensorFlow, bisam-keras sets the variable to `"1"` on x86-64 unless the
user has set it; imported after TensorFlow started with oneDNN off, it warns
once and says what to set. An explicit user setting always wins: no change and
no warning.

`bisam_keras/__init__.py` imports this module first, and importing it calls
`configure()`. It imports nothing from TensorFlow unless TensorFlow is already
imported.
"""

import os
import platform
import sys
import warnings

ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"
X86_64_MACHINES = ("x86_64", "amd64", "x86-64", "em64t")

_warned = False


def onednn_action(user_setting, tensorflow_imported, onednn_enabled, x86_64):
    """What to do about TensorFlow's oneDNN kernels; a pure function.

    Args:
        user_setting: the value of `TF_ENABLE_ONEDNN_OPTS` in the environment, or
            `None` when it is unset.
        tensorflow_imported: whether TensorFlow is already imported (then the
            variable has been read and setting it changes nothing).
        onednn_enabled: what TensorFlow reports
            (`_pywrap_util_port.IsMklEnabled()`); only read when
            `tensorflow_imported`.
        x86_64: whether the CPU is x86-64, where oneDNN's kernels are the fast ones.

    Returns:
        `"set"` (set the variable to `"1"`), `"warn"` (TensorFlow started with
        oneDNN off, too late to change it), or `None` (nothing to do).
    """
    if user_setting is not None or not x86_64:
        return None
    if not tensorflow_imported:
        return "set"
    return None if onednn_enabled else "warn"


def warning_message():
    return (
        "TensorFlow was imported before bisam_keras with its oneDNN CPU kernels off, "
        "so convolutions run on Eigen's slower path (about 2x slower training on "
        "AVX2-only CPUs). Set the environment variable TF_ENABLE_ONEDNN_OPTS=1 before "
        "TensorFlow is imported, or import bisam_keras first; set "
        "TF_ENABLE_ONEDNN_OPTS=0 to keep them off without this warning."
    )


def _onednn_enabled():
    try:
        from tensorflow.python.util import _pywrap_util_port

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):  # a TensorFlow build without the probe: no advice
        return True


def configure(environ=None, stacklevel=2):
    """Sets `TF_ENABLE_ONEDNN_OPTS=1` before TensorFlow starts, or warns once.

    Called when this module is imported, first thing in `import bisam_keras`.
    Returns the action taken (see `onednn_action`).
    """
    global _warned
    environ = os.environ if environ is None else environ
    tensorflow_imported = "tensorflow" in sys.modules
    x86_64 = platform.machine().lower() in X86_64_MACHINES
    user_setting = environ.get(ONEDNN_VARIABLE)
    enabled = _onednn_enabled() if tensorflow_imported and user_setting is None else None
    action = onednn_action(user_setting, tensorflow_imported, enabled, x86_64)
    if action == "set":
        environ[ONEDNN_VARIABLE] = "1"
    elif action == "warn" and not _warned:
        _warned = True
        warnings.warn(warning_message(), RuntimeWarning, stacklevel=stacklevel + 1)
    return action


# configure -> this module -> bisam_keras/__init__.py -> the user's `import bisam_keras`
# (warnings skips the importlib frames in between).
configure(stacklevel=3)
