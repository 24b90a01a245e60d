"""The command line's checks that run before any training: start-up without
TensorFlow, the output folder, `--resume` against `config.json`, the settings
`config.json` records, `results.csv` and the one-line errors."""

import csv
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time

import pytest

from bisam_keras import cli
from bisam_keras.experiments import RunConfig, runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP")}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return {**env, **extra}


def _python(code, **kwargs):
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120,
        **kwargs,
    )  # fmt: skip


# --------------------------------------------------------------------------- #
# Start-up: --help, models and flag errors answer without TensorFlow.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "argv, code",
    [
        (["--help"], 0),
        (["train", "--help"], 0),
        (["models"], 0),
        (["train", "--epochs", "0"], 2),
        (["train", "--output", "{file}"], 2),
        (["train", "--output", "{file}/runs"], 2),
    ],
)
def test_the_command_answers_without_importing_tensorflow(tmp_path, argv, code):
    # PYTHONPROFILEIMPORTTIME makes Python list every module it imports on stderr.
    (tmp_path / "a_file").write_text("x")
    argv = [a.replace("{file}", str(tmp_path / "a_file")) for a in argv]
    done = subprocess.run(
        ["bisam-keras", *argv], capture_output=True, text=True, timeout=120,
        env=_env(PYTHONPROFILEIMPORTTIME="1"),
    )  # fmt: skip
    assert done.returncode == code, done.stderr[-2000:]
    imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()
                if line.startswith("import time:")]  # fmt: skip
    assert "bisam_keras.cli" in imported
    assert not [m for m in imported if m.split(".")[0] in ("tensorflow", "keras")]
    if argv == ["models"]:
        assert "resnet20" in done.stdout.split()


def test_import_bisam_keras_registers_the_saved_classes():
    # Outside the command, `import bisam_keras` loads everything, so that
    # keras.models.load_model finds the package's classes in a new process.
    done = _python(
        "import sys, bisam_keras\n"
        "print('bisam_keras.training.sharpness_aware_model' in sys.modules,"
        " 'bisam_keras.optimizers.bisam' in sys.modules)"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-2:] == ["True", "True"]


def test_help_and_models_answer_in_under_3_seconds():
    for argv in (["--help"], ["models"]):
        start = time.perf_counter()
        done = subprocess.run(
            ["bisam-keras", *argv], capture_output=True, text=True, env=_env(), timeout=60
        )
        seconds = time.perf_counter() - start
        assert done.returncode == 0, done.stderr
        assert seconds < 3.0, (argv, seconds)
        assert done.stderr == ""


def test_static_name_lists_match_the_packages():
    # The parser lists the names without importing TensorFlow; they must be
    # exactly those the packages accept.
    from bisam_keras import data, experiments, models

    assert list(cli.MODELS) == models.names()
    assert list(cli.DATASETS) == data.names()
    assert cli.METHODS == experiments.METHODS


def test_lazy_package_keeps_its_public_names():
    import bisam_keras as bk
    from bisam_keras import SAM, BiSAM  # noqa: F401

    assert bk.SAM is SAM and bk.BiSAM is BiSAM
    assert bk.experiments.RunConfig is RunConfig and callable(bk.data.load)
    assert set(bk.__all__) <= set(dir(bk)) and bk.__version__
    with pytest.raises(AttributeError):
        bk.no_such_name  # noqa: B018


# --------------------------------------------------------------------------- #
# The output folder: one line, exit 2, before any data is read.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda p: (p / "f").write_text("x") and p / "f", "is a file"),
        (lambda p: (p / "f").write_text("x") and p / "f" / "runs", "is under a file"),
        # A read-only file system stops root too (tests often run as root).
        (lambda p: "/proc/self/bisam-runs", "cannot be written"),
    ],
)
def test_bad_output_folder_is_one_line_before_any_data(tmp_path, capsys, make, expected):
    output = make(tmp_path)
    start = time.perf_counter()
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--dataset", "cifar10", "--data-dir", "/nonexistent", "--output",
                  str(output)])  # fmt: skip
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and expected in err and "--output" in err
    assert "--data-dir" not in err  # the folder is checked before the data
    assert time.perf_counter() - start < 5


# --------------------------------------------------------------------------- #
# config.json records the settings a run uses; --resume compares them.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "method, used, unused",
    [
        ("sgd", [], ["rho", "mu", "alpha", "eta", "swp_probability", "sds_fraction"]),
        ("sam", ["rho"], ["mu", "alpha", "eta", "swp_probability", "sds_fraction"]),
        ("bisam-neglog", ["rho", "mu"], ["alpha", "eta", "swp_probability", "sds_fraction"]),
        ("bisam-tanh", ["rho", "mu", "alpha"], ["eta", "swp_probability", "sds_fraction"]),
        ("a-bisam-tanh", ["rho", "mu", "alpha", "eta"], ["swp_probability", "sds_fraction"]),
        ("esam", ["rho", "swp_probability", "sds_fraction"], ["mu", "alpha", "eta"]),
    ],
)
def test_config_records_only_the_settings_the_method_uses(method, used, unused):
    config = RunConfig(method=method, mu=2.0)
    recorded = runner.recorded_config(config)
    for name in used:
        assert recorded[name] == getattr(config, name), name
    for name in unused:
        assert recorded[name] is None, name
    assert list(recorded) == [f.name for f in dataclasses.fields(RunConfig)]


def _saved_run(tmp_path, finished, **fields):
    """A run folder as `bisam-keras train` leaves it: config.json (and result.json).

    config.json as earlier versions wrote it, every field with its value:
    `--resume` reads those too."""
    config = RunConfig(output=str(tmp_path), subset=300, batch_size=64, epochs=10, verbose=0,
                       **fields)  # fmt: skip
    os.makedirs(config.run_dir())
    with open(os.path.join(config.run_dir(), "config.json"), "w") as f:
        json.dump(dataclasses.asdict(config), f)
    if finished:
        result = {"val_accuracy": 0.5, "epoch": 7, "epochs_run": 10, "test_accuracy": 0.25}
        with open(os.path.join(config.run_dir(), "result.json"), "w") as f:
            json.dump(result, f)
    return config


BASE = ["train", "--subset", "300", "--batch-size", "64", "--verbose", "0"]


@pytest.mark.parametrize("finished", [False, True])
def test_resume_refuses_changed_settings_in_one_message(tmp_path, capsys, finished):
    config = _saved_run(tmp_path, finished)
    with pytest.raises(SystemExit) as info:
        cli.main([*BASE, "--output", str(tmp_path), "--resume", "--lr", "0.5", "--rho", "0.3"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "--lr 0.1 -> 0.5" in err and "--rho 0.05 -> 0.3" in err
    assert ("finished" if finished else "interrupted") in err
    saved = json.load(open(os.path.join(config.run_dir(), "config.json")))
    assert (saved["lr"], saved["rho"]) == (0.1, 0.05)  # untouched


def test_resume_of_a_finished_run_with_more_epochs_is_refused(tmp_path, capsys):
    _saved_run(tmp_path, finished=True)
    with pytest.raises(SystemExit) as info:
        cli.main([*BASE, "--output", str(tmp_path), "--resume", "--epochs", "12"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "finished" in err and "--epochs 10 -> 12" in err


def test_resume_of_a_finished_run_prints_its_result(tmp_path, capsys):
    # --verbose and settings the method does not use (alpha for -log) do not
    # change the experiment.
    _saved_run(tmp_path, finished=True)
    argv = ["train", "--subset", "300", "--batch-size", "64", "--epochs", "10", "--verbose", "2"]
    assert cli.main([*argv, "--output", str(tmp_path), "--resume", "--alpha", "0.7"]) == 0
    out = capsys.readouterr().out
    assert "already finished" in out
    assert "best validation accuracy 50.00% at epoch 7/10: test accuracy 25.00%" in out


def test_differences_count_a_missing_field_as_its_default():
    config = RunConfig(method="esam")
    saved = runner.recorded_config(config)
    del saved["sds_fraction"], saved["sync_perturbation"]  # a config.json of an older version
    assert runner.config_differences(saved, config) == []
    assert runner.config_differences(saved, RunConfig(method="esam", sds_fraction=0.25)) == [
        ("sds_fraction", 0.5, 0.25)
    ]
    # where the run is read from and how it is shown may change
    moved = RunConfig(method="esam", output="elsewhere", verbose=0, data_dir="/data")
    assert runner.config_differences(saved, moved) == []


# --------------------------------------------------------------------------- #
# results.csv: one CSV table.
# --------------------------------------------------------------------------- #


def test_results_csv_has_one_header_and_one_row_per_group_and_metric(tmp_path, capsys):
    out = tmp_path / "runs"
    expected = {}
    for d_i, dataset in enumerate(("cifar10", "digits")):
        for m_i, model in enumerate(("resnet20", "wrn28_2")):
            for k_i, method in enumerate(("sam", "bisam-neglog")):
                for seed in (0, 1, 2):
                    top1 = 0.5 + 0.1 * d_i + 0.01 * m_i + 0.001 * k_i + 0.0001 * seed**2
                    top5 = 0.9 + 0.001 * seed
                    folder = out / dataset / model / method / f"seed{seed}"
                    folder.mkdir(parents=True)
                    (folder / "result.json").write_text(json.dumps({
                        "dataset": dataset, "model": model, "method": method, "seed": seed,
                        "test_accuracy": top1, "test_top5_accuracy": top5,
                    }))  # fmt: skip
                    for metric, value in (("test_accuracy", top1), ("test_top5_accuracy", top5)):
                        expected.setdefault((dataset, model, method, metric), []).append(value)
    assert cli.main(["report", "--output", str(out)]) == 0
    raw = (out / "results.csv").read_bytes()
    assert b"\r" not in raw
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["dataset", "model", "method", "metric", "mean", "std", "seeds"]
    body = rows[1:]
    assert len(body) == len(expected) == 16
    seen = set()
    for dataset, model, method, metric, mean, std, seeds in body:
        key = (dataset, model, method, metric)
        assert key not in seen
        seen.add(key)
        values = expected[key]
        # mean and sample std of three doubles: a few ulps apart at most
        assert float(mean) == pytest.approx(statistics.mean(values), rel=1e-12)
        assert float(std) == pytest.approx(statistics.stdev(values), rel=1e-9, abs=1e-15)
        assert seeds == "0 1 2"


# --------------------------------------------------------------------------- #
# Errors of the data are one line, exit 1.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("kind", ["DataError", "DatasetUnavailableError"])
def test_data_errors_are_one_line_exit_1(tmp_path, capsys, monkeypatch, kind):
    # The loader's own error types (a two-line message too) reach the user as
    # one line; the readers' checks are tested in tests/test_data.py.
    from bisam_keras import data

    def unusable(*args, **kwargs):
        raise getattr(data, kind)("train-00000-of-00005.tfrecord: record 7\ndoes not decode")

    monkeypatch.setattr(runner.data_lib, "load", unusable)
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--output", str(tmp_path / "o"), "--verbose", "0"])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err == (
        "bisam-keras train: error: train-00000-of-00005.tfrecord: record 7 does not decode\n"
    )
    assert not os.path.exists(tmp_path / "o")


# --------------------------------------------------------------------------- #
# report: a run whose files are damaged is skipped with a warning naming them.
# --------------------------------------------------------------------------- #


def test_report_skips_the_runs_whose_files_are_damaged_naming_each_file(tmp_path, capsys):
    out = tmp_path / "runs"
    good = {"dataset": "digits", "model": "resnet20", "method": "sam", "val_accuracy": 0.75,
            "epoch": 2, "test_accuracy": 0.5}  # fmt: skip
    history = json.dumps({"val_accuracy": [0.5, 0.75], "loss": [2.0, 1.0]})
    runs = {
        0: (json.dumps({**good, "seed": 0}), history),
        1: (json.dumps({**good, "seed": 1})[:30], None),  # cut short, as by a full disk
        2: ("", history),  # empty
        3: (json.dumps(good), history),  # valid JSON without `seed`
        4: (json.dumps({**good, "seed": 4, "test_accuracy": "high"}), None),
        5: (json.dumps([good]), None),  # not an object
        6: (json.dumps({**good, "seed": 6, "test_accuracy": 0.25}), history[:20]),
    }
    paths = {}
    for seed, (result, history_text) in runs.items():
        folder = out / "digits" / "resnet20" / "sam" / f"seed{seed}"
        folder.mkdir(parents=True)
        (folder / "result.json").write_text(result)
        if history_text is not None:
            (folder / "history.json").write_text(history_text)
        paths[seed] = folder
    assert cli.main(["report", "--output", str(out)]) == 0
    captured = capsys.readouterr()
    warnings = captured.err.splitlines()
    expected = {
        1: f"{paths[1] / 'result.json'} cannot be read: Expecting value: line 1 column 31",
        2: f"{paths[2] / 'result.json'} cannot be read: Expecting value: line 1 column 1",
        3: f"{paths[3] / 'result.json'} is not a run's result: it lacks 'seed'",
        4: f"{paths[4] / 'result.json'} is not a run's result: 'test_accuracy' is 'high', not a",
        5: f"{paths[5] / 'result.json'} is not a run's result: it holds a list, not a JSON object",
        6: f"{paths[6] / 'history.json'} cannot be read: ",
    }
    assert len(warnings) == len(expected), warnings
    for seed, message in expected.items():
        (line,) = [w for w in warnings if str(paths[seed]) in w]
        assert line.startswith(f"bisam-keras report: warning: {message}"), line
        left_out = "plots" if seed == 6 else "report"
        assert line.endswith(f"(the run is left out of the {left_out})"), line
    report = json.loads((out / "results.json").read_text())
    assert sorted(r["seed"] for r in report["runs"]) == [0, 6]
    assert report["summary"][0]["mean"] == pytest.approx(0.375)
    assert len(os.listdir(out / "plots")) == 1


def test_report_with_only_damaged_runs_is_one_line(tmp_path, capsys):
    folder = tmp_path / "digits" / "resnet20" / "sam" / "seed0"
    folder.mkdir(parents=True)
    (folder / "result.json").write_text("{")
    with pytest.raises(SystemExit) as info:
        cli.main(["report", "--output", str(tmp_path)])
    assert info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"bisam-keras report: warning: {folder / 'result.json'} cannot be")
    assert err[1] == (
        "bisam-keras report: error: --output holds no finished runs to report (no readable "
        f"result.json below {str(tmp_path)!r}, 1 that cannot be read)."
    )
