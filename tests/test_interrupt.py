"""Real signals sent to a real `bisam-keras train`: Ctrl-C ends with one line
and exit 130 (SIGTERM: 143); a SIGKILL at any moment leaves a run that `--resume` finishes."""

import functools
import json
import os
import re
import resource
import signal
import subprocess
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOISE = ("cuInit", "oneDNN custom operations", "absl::InitializeLog", "Traceback")


def _start(output, *extra, limit=None):
    """`bisam-keras train` of a small run in a new process; `limit`: a
    `resource.setrlimit(*limit)` for it, such as a file-size limit."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP")}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    argv = ["bisam-keras", "train", "--subset", "300", "--batch-size", "64", "--method", "sgd",
            "--epochs", "3", "--verbose", "2", "--output", str(output), *extra]  # fmt: skip
    return subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
        preexec_fn=functools.partial(_default_sigint, limit),
    )


def _default_sigint(limit=None):
    # A shell without job control starts background commands (`cmd &`, as a CI
    # script may run pytest) with SIGINT ignored, and a program inherits that: Python
    # then installs no KeyboardInterrupt handler. A user's terminal delivers Ctrl-C;
    # so must the test, whatever started pytest.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if limit is not None:
        resource.setrlimit(*limit)


def _wait_for(path, process, timeout=600, interval=0.005):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if process.poll() is not None:
            raise AssertionError(f"ended before {path}: {process.communicate()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"no {path} after {timeout} s")
        time.sleep(interval)


@pytest.mark.slow
def test_ctrl_c_then_kill_then_resume(tmp_path):
    run_dir = tmp_path / "digits" / "resnet20" / "sgd" / "seed0"
    backup = run_dir / "backup"

    # Ctrl-C once epoch 1 is committed: one line, exit 130.
    process = _start(tmp_path)
    _wait_for(backup / "state.json", process)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 130, (out, err)
    match = re.fullmatch(
        r"interrupted in epoch (\d); rerun the same command with --resume to continue\n", err
    )
    assert match, err  # the whole of stderr: no traceback, no TensorFlow start-up lines
    interrupted = int(match.group(1))
    assert interrupted >= 2 and "Epoch 1/3" in out

    # --resume, killed at once when it starts writing the next epoch's backup.
    process = _start(tmp_path, "--resume")
    _wait_for(backup / f"epoch-{interrupted}.weights.h5", process, interval=0.0005)
    process.send_signal(signal.SIGKILL)
    out, err = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert f"resuming at epoch {interrupted}, from {backup}" in out
    assert not any(noise in err for noise in NOISE), err

    # The kill left a resumable run: it finishes with every epoch once.
    process = _start(tmp_path, "--resume")
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, (out, err)
    assert re.search(r"resuming at epoch [23], from ", out), out
    assert not any(noise in err for noise in NOISE), err
    rows = (run_dir / "history.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows] == ["epoch", "1", "2", "3"]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["epochs_run"] == 3 and (run_dir / "best.keras").exists()
    assert not backup.exists()


@pytest.mark.slow
def test_sigterm_ends_like_ctrl_c_with_exit_143(tmp_path):
    """A batch scheduler's SIGTERM: the same one line as Ctrl-C, exit 128 + 15."""
    process = _start(tmp_path)
    _wait_for(tmp_path / "digits" / "resnet20" / "sgd" / "seed0" / "backup" / "state.json", process)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 143, (out, err)
    assert re.fullmatch(
        r"interrupted in epoch \d; rerun the same command with --resume to continue\n", err
    ), err
