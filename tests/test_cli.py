"""`bisam-keras` end to end on small real data: train, resume, compare, report."""

import json
import os

import keras
import numpy as np
import pytest

from bisam_keras import cli
from bisam_keras.experiments import RunConfig, runner

SMALL = [
    "--dataset",
    "digits",
    "--subset",
    "300",
    "--batch-size",
    "64",
    "--epochs",
    "3",
    "--model",
    "resnet20",
    "--verbose",
    "0",
]


def run_cli(args, capsys=None):
    code = cli.main(args)
    return code


def test_train_writes_config_history_checkpoint_and_result(tmp_path, capsys):
    out = str(tmp_path / "runs")
    assert cli.main(["train", *SMALL, "--method", "bisam-neglog", "--output", out]) == 0
    run_dir = os.path.join(out, "digits", "resnet20", "bisam-neglog", "seed0")
    for name in ("config.json", "history.csv", "history.json", "result.json", "best.keras"):
        assert os.path.exists(os.path.join(run_dir, name)), name
    assert os.listdir(os.path.join(run_dir, "tensorboard"))
    config = json.load(open(os.path.join(run_dir, "config.json")))
    assert config["method"] == "bisam-neglog" and config["epochs"] == 3 and config["subset"] == 300
    history = json.load(open(os.path.join(run_dir, "history.json")))
    result = json.load(open(os.path.join(run_dir, "result.json")))
    assert len(history["val_accuracy"]) == 3
    best = int(np.argmax(history["val_accuracy"]))
    assert result["epoch"] == best + 1
    assert result["test_accuracy"] == history["test_accuracy"][best]
    assert {"perturbed_loss", "loss", "test_top5_accuracy"} <= set(history)
    model = keras.models.load_model(os.path.join(run_dir, "best.keras"))
    assert model.optimizer.get_config()["lower_bound"] == "neglog"


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_resume_continues_to_the_same_result(tmp_path):
    base = dict(
        dataset="digits",
        subset=300,
        batch_size=64,
        epochs=4,
        model="resnet20",
        method="sam",
        verbose=0,
    )
    straight = runner.run(RunConfig(output=str(tmp_path / "a"), **base))
    interrupted = RunConfig(output=str(tmp_path / "b"), **base)
    with pytest.raises(KeyboardInterrupt):
        runner.run(interrupted, callbacks=[_Interrupt()])
    assert (
        cli.main(
            [
                "train",
                "--dataset",
                "digits",
                "--subset",
                "300",
                "--batch-size",
                "64",
                "--epochs",
                "4",
                "--model",
                "resnet20",
                "--method",
                "sam",
                "--verbose",
                "0",
                "--output",
                str(tmp_path / "b"),
                "--resume",
            ]
        )
        == 0
    )
    resumed = json.load(open(os.path.join(interrupted.run_dir(), "result.json")))
    history_a = json.load(
        open(os.path.join(RunConfig(output=str(tmp_path / "a"), **base).run_dir(), "history.json"))
    )
    history_b = json.load(open(os.path.join(interrupted.run_dir(), "history.json")))
    assert len(history_b["loss"]) == 4
    np.testing.assert_allclose(history_b["loss"], history_a["loss"], rtol=1e-4)
    np.testing.assert_allclose(history_b["val_accuracy"], history_a["val_accuracy"], atol=1e-6)
    assert resumed["test_accuracy"] == pytest.approx(straight["test_accuracy"], abs=1e-6)


@pytest.mark.slow
def test_compare_then_report_builds_tables_and_plots(tmp_path, capsys):
    out = str(tmp_path / "grid")
    args = [
        "compare",
        *SMALL,
        "--methods",
        "sgd",
        "sam",
        "bisam-tanh",
        "--models",
        "resnet20",
        "--seeds",
        "0",
        "1",
        "--output",
        out,
    ]
    args[args.index("--model") : args.index("--model") + 2] = []
    assert cli.main(args) == 0
    results = runner.load_results(out)
    assert len(results) == 6
    table = open(os.path.join(out, "results.md")).read()
    assert "| Model | SGD | SAM | BiSAM (tanh) |" in table
    row = [line for line in table.splitlines() if line.startswith("| resnet20 |")][0]
    sam = [r["test_accuracy"] for r in results if r["method"] == "sam"]
    assert f"{100 * np.mean(sam):.2f} ± {100 * np.std(sam, ddof=1):.2f}" in row
    summary = json.load(open(os.path.join(out, "results.json")))
    assert len(summary["runs"]) == 6
    assert os.path.getsize(os.path.join(out, "plots", "curves_digits_resnet20.png")) > 1000
    assert open(os.path.join(out, "results.csv")).readline().startswith("dataset,model,method")
    # `report` alone rebuilds the same table from the saved runs.
    os.remove(os.path.join(out, "results.md"))
    assert cli.main(["report", "--output", out]) == 0
    assert open(os.path.join(out, "results.md")).read() == table


def test_preset_fills_paper_hyper_parameters():
    args = cli.build_parser().parse_args(
        ["compare", "--preset", "paper-cifar", "--methods", "sgd", "a-bisam-tanh", "--epochs", "7"]
    )
    sgd, abisam = cli.make_configs(args, several=True)
    assert (sgd.lr, sgd.momentum, sgd.weight_decay, sgd.batch_size) == (0.1, 0.9, 5e-4, 128)
    assert (sgd.label_smoothing, sgd.model, sgd.dataset) == (0.1, "resnet56", "cifar10")
    assert sgd.epochs == abisam.epochs == 7  # an explicit flag beats the preset
    assert (abisam.rho, abisam.mu, abisam.alpha) == (2.0, 10.0, 0.1)
    args = cli.build_parser().parse_args(["train", "--preset", "paper-cifar", "--method", "sgd"])
    (config,) = cli.make_configs(args)
    assert config.epochs == 400 and config.rho == 0.05


@pytest.mark.parametrize(
    "args, flag",
    [
        (["train", "--dataset", "mnist"], "--dataset"),
        (["train", "--model", "resnet18"], "--model"),
        (["train", "--method", "adam"], "--method"),
        (["train", "--epochs", "0"], "--epochs"),
        (["train", "--epochs", "-3"], "--epochs"),
        (["train", "--data-dir", "/nonexistent/cifar"], "--data-dir"),
    ],
)
def test_bad_input_names_the_flag_without_a_traceback(tmp_path, capsys, args, flag):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*args, "--output", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert flag in err
    assert "Traceback" not in err


def test_data_dir_with_wrong_format_is_named(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a dataset")
    with pytest.raises(SystemExit):
        cli.main(
            [
                "train",
                "--dataset",
                "cifar10",
                "--data-dir",
                str(tmp_path),
                "--output",
                str(tmp_path / "out"),
            ]
        )
    err = capsys.readouterr().err
    assert "--data-dir" in err and "Traceback" not in err


def test_existing_run_needs_resume(tmp_path, capsys):
    config = RunConfig(output=str(tmp_path))
    os.makedirs(config.run_dir())
    open(os.path.join(config.run_dir(), "config.json"), "w").write("{}")
    with pytest.raises(SystemExit):
        cli.main(["train", "--output", str(tmp_path), "--verbose", "0"])
    assert "--resume" in capsys.readouterr().err


def test_strategy_flag_runs_under_mirrored_strategy(tmp_path):
    # Two logical CPU devices (tests/conftest.py): the global batch of 64 is
    # split over both replicas, and the run is the same protocol.
    args = ["train", *SMALL, "--epochs", "1", "--strategy", "mirrored", "--output", str(tmp_path)]
    assert cli.main(args) == 0
    (result,) = runner.load_results(str(tmp_path))
    assert 0.0 <= result["test_accuracy"] <= 1.0 and result["epochs_run"] == 1
    config = json.load(open(os.path.join(RunConfig(output=str(tmp_path)).run_dir(), "config.json")))
    assert config["strategy"] == "mirrored"
    assert runner.make_strategy("mirrored").num_replicas_in_sync == 2
