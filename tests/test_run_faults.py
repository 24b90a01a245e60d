"""Faults of a run, each with the real thing: a second real `bisam-keras train`
of the same run, real edits of a real backup.

Each ends in one line naming what went wrong (`bisam-keras train: error: ...`)
with a documented exit status, and leaves the run's files as they were.
"""

import json
import os
import shutil
import socket
import time

import pytest
import reference_run
from test_interrupt import _start

from bisam_keras import cli
from bisam_keras.experiments import lock


def _one_line(err):
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


# --------------------------------------------------------------------------- #
# The lock: one process at a time per run folder.
# --------------------------------------------------------------------------- #


def _wait_for_holder(path, process, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"ended before locking {path}: {process.communicate()}")
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            time.sleep(0.05)
    raise AssertionError(f"no lock {path} after {timeout} s")


@pytest.mark.slow
def test_a_second_train_of_the_same_run_is_refused_naming_the_first(tmp_path, capsys):
    first = _start(tmp_path, "--epochs", "50")
    lock_file = tmp_path / reference_run.RUN / ".lock"
    try:
        holder = _wait_for_holder(lock_file, first)
        assert holder == {"pid": first.pid, "host": socket.gethostname()}
        argv = ["train", "--subset", "300", "--batch-size", "64", "--method", "sgd",
                "--epochs", "50", "--verbose", "0", "--output", str(tmp_path)]  # fmt: skip
        with pytest.raises(SystemExit) as info:
            cli.main([*argv, "--resume"])
        assert info.value.code == 2
        err = _one_line(capsys.readouterr().err)
        assert err.startswith(
            f"bisam-keras train: error: another process (PID {first.pid} on host "
            f"{socket.gethostname()}) is running this run already: it holds {lock_file}. "
        ), err
        assert first.poll() is None, "the first run trains on"
    finally:
        first.kill()  # SIGKILL: no handler runs, the kernel releases the lock
        first.communicate()
    with lock.hold(tmp_path / reference_run.RUN):
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()
    assert not lock_file.exists()


# --------------------------------------------------------------------------- #
# backup/state.json may name only files inside backup/.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("edit", ["relative", "absolute", "symlink", "weights"])
def test_backup_state_may_name_only_files_in_backup(tmp_path, capsys, edit):
    """A crafted state.json made --resume hard-link best.keras to a file outside
    the run folder (or load weights from one)."""
    ref = reference_run.reference()
    run_dir = reference_run.copy_run(ref.after_epoch_1, tmp_path / "runs")
    backup = run_dir / "backup"
    outside = tmp_path / "outside.keras"
    shutil.copy(backup / "best-1.keras", outside)
    state = json.loads((backup / "state.json").read_text())
    if edit == "relative":
        state["best_model"] = os.path.relpath(outside, backup)
    elif edit == "absolute":
        state["best_model"] = str(outside)
    elif edit == "symlink":
        os.remove(backup / "best-1.keras")
        os.symlink(outside, backup / "best-1.keras")
    else:
        shutil.copy(backup / "epoch-1.weights.h5", run_dir / "outside.weights.h5")
        state["weights"] = "../outside.weights.h5"
    (backup / "state.json").write_text(json.dumps(state))
    content = outside.read_bytes()
    with pytest.raises(SystemExit) as info:
        cli.main([*reference_run.ARGV, "--output", str(tmp_path / "runs"), "--resume"])
    assert info.value.code == 1
    err = _one_line(capsys.readouterr().err)
    field = "weights" if edit == "weights" else "best_model"
    assert f"cannot read the backup {backup / 'state.json'} (`{field}` " in err, err
    assert f"Delete the folder {backup} and rerun with --resume" in err
    assert os.stat(outside).st_nlink == 1 and outside.read_bytes() == content
    assert not os.path.samefile(run_dir / "best.keras", outside)
