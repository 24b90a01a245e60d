"""Faults of a run, each with the real thing: a second real `bisam-keras train`
of the same run, a real full file system (a small tmpfs, or `ulimit -f`), a
real diverging run, real edits of a real backup.

Each ends in one line naming what went wrong (`bisam-keras train: error: ...`)
with a documented exit status, and leaves the run's committed epochs as they
were: resumed afterwards, the run ends bitwise where the uninterrupted
reference run (`reference_run`) ended.
"""

import json
import os
import re
import resource
import shutil
import socket
import subprocess
import time

import keras
import numpy as np
import pytest
import reference_run
from test_interrupt import _start

from bisam_keras import cli
from bisam_keras.experiments import faults, lock, runner

COMMITTED = ("config.json", "history.csv", "best.keras", "backup/state.json",
             "backup/epoch-1.weights.h5", "backup/best-1.keras")  # fmt: skip


def _one_line(err):
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def _committed(run_dir):
    """The files of epoch 1's commit; of history.csv the rows up to epoch 1 (a
    failed commit may have written the next row: `--resume` cuts it off)."""
    files = reference_run.files(run_dir)
    committed = {name: files.get(name) for name in COMMITTED}
    committed["history.csv"] = committed["history.csv"].splitlines()[:2]
    return committed


def _same_result(run_dir, reference_dir):
    """The run ended bitwise where the reference did: history.csv and result.json."""
    assert (run_dir / "history.csv").read_bytes() == (reference_dir / "history.csv").read_bytes()
    results = [json.loads((d / "result.json").read_text()) for d in (run_dir, reference_dir)]
    for result in results:
        del result["train_seconds_last_session"]
    assert results[0] == results[1]


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
# A full disk: one line naming the file, the last commit intact, --resume goes on.
# --------------------------------------------------------------------------- #


def _mount_tmpfs(path, size):
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)  # fmt: skip
    return done.returncode == 0


def _resize_tmpfs(path, size):
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


def _used_bytes(path):
    stat = os.statvfs(path)
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["tmpfs", "ulimit"])
def test_a_full_disk_ends_in_one_line_and_resume_continues_bitwise(
    tmp_path, capsys, request, fault
):
    """Epoch 2's commit cannot write its weights (or its best model): without the
    handling, a traceback, or a segfault (exit 139) when HDF5 fails."""
    ref = reference_run.reference()
    weights = os.path.getsize(ref.after_epoch_1 / "backup" / "epoch-1.weights.h5")
    best = os.path.getsize(ref.after_epoch_1 / "best.keras")
    val = json.loads((ref.finished / "history.json").read_text())["val_accuracy"]
    # Room for epoch 2's best model if it has one (it is saved first), not for its weights.
    room = (best if val[1] > val[0] else 0) + weights // 2
    output, limit = tmp_path / "disk", None
    if fault == "tmpfs":
        if not _mount_tmpfs(output, "64m"):
            pytest.skip("cannot mount a tmpfs here (it needs root)")
        request.addfinalizer(lambda: subprocess.run(["umount", "-l", str(output)]))
        run_dir = reference_run.copy_run(ref.after_epoch_1, output)
        _resize_tmpfs(output, _used_bytes(output) + room)
    else:
        run_dir = reference_run.copy_run(ref.after_epoch_1, output)
        limit = (resource.RLIMIT_FSIZE, (weights // 2, resource.RLIM_INFINITY))
    committed = _committed(run_dir)

    process = _start(output, "--epochs", "2", "--resume", limit=limit)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 1, (process.returncode, out, err)
    assert f"resuming at epoch 2, from {run_dir / 'backup'}" in out
    match = re.fullmatch(
        r"bisam-keras train: error: cannot write (\S+): (No space left on device|File too "
        r"large)\. Nothing committed is lost: make space \(or raise the file-size "
        r"limit\), then rerun this command with --resume\n",
        err,
    )
    assert match, err  # the whole of stderr
    assert match.group(1).startswith(f"{run_dir}{os.sep}"), match.group(1)
    if fault == "tmpfs":  # HDF5's write fails: what used to crash the process (exit 139)
        assert match.group(1) == str(run_dir / "backup" / "epoch-2.weights.h5")
    assert _committed(run_dir) == committed

    if fault == "tmpfs":
        _resize_tmpfs(output, "64m")
    capsys.readouterr()
    assert cli.main([*reference_run.ARGV, "--output", str(output), "--resume"]) == 0
    assert f"resuming at epoch 2, from {run_dir / 'backup'}" in capsys.readouterr().out
    _same_result(run_dir, ref.finished)


# --------------------------------------------------------------------------- #
# A loss that becomes NaN or infinite: the run stops and reports no result.
# --------------------------------------------------------------------------- #


def test_a_diverging_run_stops_in_one_line_without_a_result(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([*reference_run.ARGV, "--output", str(tmp_path), "--lr", "1e30"])
    assert info.value.code == 1
    out, err = capsys.readouterr()
    assert re.fullmatch(
        r"bisam-keras train: error: the training (perturbed_)?loss became (nan|-?inf) in "
        r"epoch 1 \(step \d\), so the run stopped without a result; no epoch had finished\. "
        r"With the same settings it would diverge again: start a new run \(another "
        r"--output\) with a smaller --lr\n",
        _one_line(err),
    ), err
    assert "best validation accuracy" not in out
    run_dir = tmp_path / reference_run.RUN
    assert sorted(os.listdir(run_dir)) == ["config.json", "tensorboard"]


class _PoisonWeights(keras.callbacks.Callback):
    """Sets a weight to NaN before the first step of epoch `epoch` (1-based)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch, self.now = epoch, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.now = epoch + 1

    def on_train_batch_begin(self, batch, logs=None):
        if self.now == self.epoch and batch == 0:
            variable = self.model.trainable_weights[0]
            variable.assign(np.full(variable.shape, np.nan, variable.dtype))


def test_divergence_after_a_commit_keeps_it_and_writes_no_result(tmp_path):
    ref = reference_run.reference()
    run_dir = reference_run.copy_run(ref.after_epoch_1, tmp_path)
    committed = _committed(run_dir)
    config = reference_run.config(tmp_path)
    with pytest.raises(faults.TrainingDiverged) as info:
        runner.run(config, resume=True, callbacks=[_PoisonWeights(2)])
    assert info.value.epoch == 2
    assert "became nan in epoch 2 (step 1)" in str(info.value)
    assert f"epoch 1 stays committed in {run_dir}" in str(info.value)
    assert not (run_dir / "result.json").exists() and not (run_dir / "history.json").exists()
    assert _committed(run_dir) == committed
    runner.run(config, resume=True)  # the committed epoch is intact: it ends as the reference
    _same_result(run_dir, ref.finished)


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
