"""Resume: `best.keras` is the model `result.json` reports, and a run killed
at any moment of its end-of-epoch commit resumes from its last finished epoch."""

import json
import os

import keras
import numpy as np
import pytest
import reference_run

from bisam_keras import cli
from bisam_keras.experiments import RunConfig, runner

# Digits, 900 images: 810 train / 90 validation, 180 test; plain SGD (one
# gradient a step) for speed.
BASE = dict(dataset="digits", subset=900, batch_size=64, model="resnet20", method="sgd", verbose=0)


class _StopAfter(keras.callbacks.Callback):
    """Ctrl-C at the end of epoch `epoch` (1-based), after the run's commit."""

    def __init__(self, epoch):
        super().__init__()
        self.stop = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.stop:
            raise KeyboardInterrupt


class _ZeroWeights(keras.callbacks.Callback):
    """Sets every weight to 0 after each step: a constant model, so the epochs
    after a resume are worse than the best epoch before it."""

    def on_train_batch_end(self, batch, logs=None):
        for variable in self.model.weights:
            variable.assign(np.zeros(variable.shape, variable.dtype))


def _evaluate(path, config):
    """The validation and test accuracy of the saved model `path`, on the run's splits."""
    from bisam_keras import data

    splits = data.load(
        config.dataset,
        batch_size=config.batch_size,
        validation_fraction=config.validation_fraction,
        seed=config.seed,
        subset=config.subset,
    )
    _, validation, test = runner._one_hot(splits)
    model = keras.models.load_model(path)
    return (
        model.evaluate(validation, verbose=0, return_dict=True)["accuracy"],
        model.evaluate(test, verbose=0, return_dict=True)["accuracy"],
    )


@pytest.mark.slow
def test_best_keras_is_the_reported_epoch_after_resumes(tmp_path):
    config = RunConfig(output=str(tmp_path), epochs=4, **BASE)
    for stop in (2, 3):  # two interruptions, each after a finished epoch
        with pytest.raises(KeyboardInterrupt) as info:
            runner.run(config, resume=stop > 2, callbacks=[_StopAfter(stop)])
    result = runner.run(config, resume=True, callbacks=[_ZeroWeights()])
    history = json.load(open(os.path.join(config.run_dir(), "history.json")))
    val = history["val_accuracy"]
    # The premise: epoch 4 (a constant model) is worse than the best before it.
    assert len(val) == 4 and val[3] < max(val[:3])
    assert result["epoch"] == int(np.argmax(val)) + 1 <= 3
    val_accuracy, test_accuracy = _evaluate(os.path.join(config.run_dir(), "best.keras"), config)
    # The same weights on the same examples: the same counts of correct answers.
    assert val_accuracy == pytest.approx(result["val_accuracy"], abs=1e-7)
    assert test_accuracy == pytest.approx(result["test_accuracy"], abs=1e-7)
    rows = open(os.path.join(config.run_dir(), "history.csv")).read().splitlines()
    assert [row.split(",")[0] for row in rows] == ["epoch", "1", "2", "3", "4"]
    assert not os.path.exists(os.path.join(config.run_dir(), "backup"))
    assert info.value.epoch == 4  # the epoch that --resume starts with


def _commit_files(run_dir):
    with open(os.path.join(run_dir, "backup", "state.json")) as f:
        return json.load(f)


@pytest.mark.slow
def test_a_kill_during_the_commit_resumes_from_the_last_finished_epoch(tmp_path, capsys):
    config = RunConfig(output=str(tmp_path), epochs=3, **BASE)
    run_dir = config.run_dir()
    with pytest.raises(KeyboardInterrupt):
        runner.run(config, callbacks=[_StopAfter(1)])
    state = _commit_files(run_dir)
    assert (state["epoch"], state["weights"]) == (1, "epoch-1.weights.h5")
    best_before = open(os.path.join(run_dir, "best.keras"), "rb").read()
    # What a SIGKILL in the middle of epoch 2's commit leaves: its best model
    # and weights half written, its history row written, state.json not yet.
    backup = os.path.join(run_dir, "backup")
    open(os.path.join(backup, "epoch-2.weights.h5"), "wb").close()
    with open(os.path.join(backup, "best-2.keras"), "wb") as f:
        f.write(best_before[: len(best_before) // 3])
    with open(os.path.join(run_dir, "history.csv"), "a") as f:
        f.write("2,0.5,1.0,0.5,0.9,0.99,1.0,1.0,0.99,1.0,1.0\n")
    with open(os.path.join(run_dir, "best.keras.partial"), "wb") as f:
        f.write(b"\x00" * 10)
    capsys.readouterr()
    argv = ["train", "--subset", "900", "--batch-size", "64", "--method", "sgd", "--epochs", "3"]
    assert cli.main([*argv, "--output", str(tmp_path), "--verbose", "0", "--resume"]) == 0
    out = capsys.readouterr().out
    assert f"resuming at epoch 2, from {os.path.join(backup, 'epoch-1.weights.h5')}" in out
    history = json.load(open(os.path.join(run_dir, "history.json")))
    assert len(history["val_accuracy"]) == 3 and 0.99 not in history["val_accuracy"]
    result = json.load(open(os.path.join(run_dir, "result.json")))
    val_accuracy, _ = _evaluate(os.path.join(run_dir, "best.keras"), config)
    assert val_accuracy == pytest.approx(result["val_accuracy"], abs=1e-7)
    assert not os.path.exists(os.path.join(run_dir, "best.keras.partial"))


@pytest.mark.slow
def test_an_sgd_run_saved_with_the_sam_wrapper_resumes_with_it(tmp_path, monkeypatch):
    """Earlier versions trained `sgd` with decay at w as a `SharpnessAwareModel`
    with `SAM(rho=0)`; its backup resumes with that wrapper and ends bitwise
    where an uninterrupted run with the wrapper ends."""
    at_w = dict(BASE, subset=300, epochs=2, weight_decay_mode="at-w", momentum_convention="torch")
    at_w.update(model_variant="authors")  # the paper-cifar model (its BatchNorm: see below)
    old, resumed = (RunConfig(output=str(tmp_path / name), **at_w) for name in ("old", "resumed"))
    with monkeypatch.context() as patch:  # what an earlier version wrote
        patch.setattr(runner.run_files, "wraps_the_model", lambda run_dir, state: True)
        runner.run(old)
        with pytest.raises(KeyboardInterrupt):
            runner.run(resumed, callbacks=[_StopAfter(1)])
    state = _commit_files(resumed.run_dir())
    assert runner.run_files.wraps_the_model(resumed.run_dir(), state)
    runner.run(resumed, resume=True)
    history = [open(os.path.join(c.run_dir(), "history.csv")).read() for c in (old, resumed)]
    assert history[0] == history[1] and "perturbed_loss" in history[0]
    new = RunConfig(output=str(tmp_path / "new"), **at_w)
    runner.run(new)  # today's sgd: a plain model with TorchSGD, the same steps
    rows = [runner.history_rows(os.path.join(c.run_dir(), "history.csv")) for c in (old, new)]
    for row in rows[0]:
        assert row.pop("perturbed_loss") == row["loss"]
    assert rows[0] == rows[1]


def test_an_unreadable_backup_says_what_to_delete(tmp_path, capsys):
    # A committed backup whose weights file a damaged disk left empty.
    config = RunConfig(output=str(tmp_path), epochs=3, **BASE)
    backup = os.path.join(config.run_dir(), "backup")
    os.makedirs(backup)
    with open(os.path.join(config.run_dir(), "config.json"), "w") as f:
        json.dump(runner.recorded_config(config), f)
    with open(os.path.join(backup, "state.json"), "w") as f:
        json.dump({"epoch": 1, "weights": "epoch-1.weights.h5"}, f)
    open(os.path.join(backup, "epoch-1.weights.h5"), "wb").close()
    argv = ["train", "--subset", "900", "--batch-size", "64", "--method", "sgd", "--epochs", "3"]
    with pytest.raises(SystemExit) as info:
        cli.main([*argv, "--output", str(tmp_path), "--verbose", "0", "--resume"])
    assert info.value.code == 1
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert f"cannot read the backup {os.path.join(backup, 'epoch-1.weights.h5')}" in err
    assert f"Delete the folder {backup} and rerun with --resume" in err


# --------------------------------------------------------------------------- #
# A run folder with committed work is never restarted or trained over.
# --------------------------------------------------------------------------- #


def _one_line(err):
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    "finished, extra",
    [
        (False, ["--resume"]),
        (False, []),
        (True, ["--resume", "--lr", "0.5"]),
        (True, []),
    ],
)
def test_a_run_folder_without_config_json_is_never_trained_over(tmp_path, capsys, finished, extra):
    """Without config.json the settings are unknown: an unfinished run is not restarted
    at epoch 1 (dropping its backup), a finished one is not retrained (overwriting
    result.json), and nothing prints "already finished"."""
    ref = reference_run.reference()
    run_dir = reference_run.copy_run(ref.finished if finished else ref.after_epoch_1, tmp_path)
    os.remove(run_dir / "config.json")
    before = reference_run.files(run_dir)
    with pytest.raises(SystemExit) as info:
        cli.main([*reference_run.ARGV, "--output", str(tmp_path), *extra])
    assert info.value.code == 1
    out, err = capsys.readouterr()
    assert "already finished" not in out and "resuming" not in out
    assert _one_line(err).startswith(f"bisam-keras train: error: {run_dir} holds a run's work (")
    assert ("result.json" if finished else "backup/state.json") in err
    assert "but no config.json" in err and "move the folder away" in err
    assert reference_run.files(run_dir) == before


def test_a_finished_run_without_result_json_is_not_trained_again(tmp_path, capsys):
    ref = reference_run.reference()
    run_dir = reference_run.copy_run(ref.finished, tmp_path)
    os.remove(run_dir / "result.json")
    before = reference_run.files(run_dir)
    with pytest.raises(SystemExit) as info:
        cli.main([*reference_run.ARGV, "--output", str(tmp_path), "--resume"])
    assert info.value.code == 1
    out, err = capsys.readouterr()
    assert "resuming" not in out
    assert f"cannot --resume the run in {run_dir}: it has finished epochs (best.keras, " in err
    assert "2 epoch(s) in history.csv) but neither result.json nor backup/state.json" in err
    assert _one_line(err) and reference_run.files(run_dir) == before


def test_a_damaged_result_json_is_named_on_resume(tmp_path, capsys):
    ref = reference_run.reference()
    run_dir = reference_run.copy_run(ref.finished, tmp_path)
    result = run_dir / "result.json"
    result.write_bytes(result.read_bytes()[:40])  # cut short, as by a full disk
    with pytest.raises(SystemExit) as info:
        cli.main([*reference_run.ARGV, "--output", str(tmp_path), "--resume"])
    assert info.value.code == 1
    err = _one_line(capsys.readouterr().err)
    assert f"error: {result} cannot be read: " in err
