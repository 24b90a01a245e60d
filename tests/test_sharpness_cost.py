"""benchmarks/sharpness_cost.py runs end to end on real CIFAR-10 and writes its JSON.

Tiny sizes (100 images, 2 products, a 4 x 4 grid); only the keys, the pass
counts and that every timing is a positive finite number are checked.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.paths import CIFAR10_DIR

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "sharpness_cost.py"


@pytest.mark.slow
def test_the_benchmark_writes_timings_and_pass_counts(tmp_path):
    path = tmp_path / "cost.json"
    command = [sys.executable, str(SCRIPT), "--data-dir", CIFAR10_DIR, "--num-examples", "100"]
    command += ["--batch-size", "50", "--iterations", "2", "--resolution", "4", "--json", path]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    process = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    result = json.loads(path.read_text())
    assert result["num_examples"] == 100 and result["machine"]["cores"] >= 1
    assert result["top_eigenvalue"]["forward_passes"] == 4
    assert result["landscape"]["forward_passes"] == 16
    for value in (
        result["seconds_forward_pass"],
        result["seconds_gradient"],
        result["top_eigenvalue"]["seconds"],
        result["landscape"]["seconds"],
    ):
        assert math.isfinite(value) and value > 0
    assert "landscape 4 x 4" in process.stdout
