"""`import bisam_keras` turns TensorFlow's oneDNN CPU kernels on unless the user chose.

TensorFlow reads `TF_ENABLE_ONEDNN_OPTS` once, at import, so every end-to-end check
runs in a fresh interpreter with a controlled environment (this test session has
already imported TensorFlow, and CI runs part of the suite with the variable set).
The decision itself is a pure function, tested case by case; the AVX2 case (no user
setting, TensorFlow already started with oneDNN off) is emulated in a subprocess by
starting TensorFlow with the variable at 0 and removing it before `import bisam_keras`.
"""

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from bisam_keras import _tf_setup

ROOT = Path(__file__).resolve().parent.parent
VARIABLE = "TF_ENABLE_ONEDNN_OPTS"


@pytest.mark.parametrize(
    "user_setting,tensorflow_imported,onednn_enabled,x86_64,expected",
    [
        (None, False, None, True, "set"),  # before TensorFlow: choose oneDNN
        (None, True, False, True, "warn"),  # too late, and oneDNN is off (AVX2 default)
        (None, True, True, True, None),  # too late, but oneDNN is on (AVX-512 default)
        ("0", False, None, True, None),  # the user's choice wins, before TensorFlow...
        ("0", True, False, True, None),  # ...and after: no warning
        ("1", False, None, True, None),
        ("", False, None, True, None),  # set, even if empty: the user's
        (None, False, None, False, None),  # not x86-64: TensorFlow's own default
        (None, True, False, False, None),
    ],
)
def test_onednn_action(user_setting, tensorflow_imported, onednn_enabled, x86_64, expected):
    action = _tf_setup.onednn_action(user_setting, tensorflow_imported, onednn_enabled, x86_64)
    assert action == expected


@pytest.mark.parametrize("value", ["0", "1", "false"])
def test_configure_leaves_a_user_setting_alone(value):
    environ = {VARIABLE: value}
    assert _tf_setup.configure(environ=environ) is None
    assert environ == {VARIABLE: value}


def run_python(code, **variables):
    """Runs `code` in a fresh interpreter with `VARIABLE` unset unless given."""
    env = {k: v for k, v in os.environ.items() if k != VARIABLE}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT), **variables)
    process = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=240, env=env
    )
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    return process


PROBE = """
import os, warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    {imports}
    from tensorflow.python.util import _pywrap_util_port
print("variable", os.environ.get("TF_ENABLE_ONEDNN_OPTS"))
print("onednn", _pywrap_util_port.IsMklEnabled())
print("warnings", sum("TF_ENABLE_ONEDNN_OPTS" in str(w.message) for w in caught))
"""


def probe(imports, **variables):
    output = run_python(PROBE.format(imports=imports), **variables).stdout.split("\n")
    return dict(line.split(" ", 1) for line in output if line)


X86_64_ONLY = pytest.mark.skipif(
    platform.machine().lower() not in _tf_setup.X86_64_MACHINES,
    reason="bisam_keras chooses oneDNN on x86-64 only",
)


@X86_64_ONLY
def test_import_before_tensorflow_turns_onednn_on():
    result = probe("import bisam_keras; import tensorflow")
    assert result == {"variable": "1", "onednn": "True", "warnings": "0"}


@pytest.mark.slow
@pytest.mark.parametrize("imports", ["import bisam_keras", "import tensorflow; import bisam_keras"])
def test_user_setting_zero_wins_without_warning(imports):
    result = probe(imports, TF_ENABLE_ONEDNN_OPTS="0")
    assert result == {"variable": "0", "onednn": "False", "warnings": "0"}


@X86_64_ONLY
def test_tensorflow_first_with_onednn_off_warns_once():
    # TensorFlow starts with oneDNN off, as on an AVX2 CPU by default; then the user's
    # setting disappears, so bisam_keras sees what an AVX2 user who set nothing sees.
    imports = (
        "import tensorflow; del os.environ['TF_ENABLE_ONEDNN_OPTS']; import bisam_keras; "
        "bisam_keras._tf_setup.configure()"  # a second call does not warn again
    )
    result = probe(imports, TF_ENABLE_ONEDNN_OPTS="0")
    assert result == {"variable": "None", "onednn": "False", "warnings": "1"}
