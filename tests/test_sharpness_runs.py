"""`bisam-keras sharpness RUN_DIR...` and the sharpness columns of `bisam-keras report`.

The run is the tests' reference run (tests/reference_run.py: digits, ResNet-20,
SGD, 2 epochs), trained once per process; `sharpness.json`'s values must equal
the library's functions called directly on the run's `best.keras` and its own
validation split, and the report's cells the mean and sample standard
deviation over seeds, computed here with NumPy.
"""

import json
import os
import shutil

import keras
import numpy as np
import pytest
import reference_run

from bisam_keras import cli, data, sharpness
from bisam_keras.sharpness import runs

SMALL = ["--num-examples", "24", "--steps", "2", "--num-samples", "2", "--iterations", "3"]


def _one_line(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """A copy of the reference run, measured by the command: `(output, run_dir, record)`."""
    output = tmp_path_factory.mktemp("runs")
    run_dir = reference_run.copy_run(reference_run.reference().finished, output)
    assert cli.main(["sharpness", str(run_dir), *SMALL, "--seed", "3"]) == 0
    with open(run_dir / "sharpness.json") as f:
        return output, run_dir, json.load(f)


@pytest.mark.slow
def test_sharpness_json_holds_what_the_library_returns(measured):
    _, run_dir, record = measured
    assert set(record["values"]) == set(runs.MEASURES)
    assert record["split"] == "validation" and record["settings"]["seed"] == 3
    assert record["run"]["method"] == "sgd" and record["machine"]["cores"] >= 1
    assert record["wall_seconds"] > 0 and not os.path.exists(run_dir / "sharpness.json.partial")
    # The run's own validation split, rebuilt here from its settings (no augmentation).
    fields = reference_run.FIELDS
    splits = data.load(
        "digits", subset=fields["subset"], batch_size=128, seed=0, augment=False, verify=None
    )
    model = keras.models.load_model(run_dir / "best.keras", compile=False)
    num = min(24, splits.num_validation)
    common = dict(num_examples=num, seed=3, objective="cross_entropy", batch_size=128)
    expected = {
        "worst_case": sharpness.worst_case(model, splits.validation, steps=2, **common).value,
        "zero_one": sharpness.worst_case(
            model, splits.validation, steps=2, **{**common, "objective": "zero_one"}
        ).value,
        "average_case": sharpness.average_case(
            model, splits.validation, num_samples=2, **common
        ).value,
        "hessian_eigenvalues": sharpness.hessian_eigenvalues(
            model, splits.validation, iterations=3, **common
        ).top,
        "hessian_trace": sharpness.hessian_trace(
            model, splits.validation, num_samples=2, **common
        ).value,
    }
    assert record["values"] == expected
    assert record["passes"]["worst_case"] == {"forward": 3, "backward": 2}
    assert record["passes"]["hessian_trace"] == {"forward": 4, "backward": 4}


@pytest.mark.slow
def test_report_adds_a_column_per_measure_mean_and_std_over_seeds(measured, capsys):
    output, run_dir, record = measured
    # A second seed of the same configuration, with its own (hand-written) sharpness.json.
    seed1 = run_dir.parent / "seed1"
    shutil.rmtree(seed1, ignore_errors=True)
    os.makedirs(seed1)
    for name in ("result.json", "history.json", "config.json"):
        shutil.copy(run_dir / name, seed1 / name)
    with open(seed1 / "result.json") as f:
        result = json.load(f)
    with open(seed1 / "result.json", "w") as f:
        json.dump({**result, "seed": 1}, f)
    other = {name: 2 * value + 1 for name, value in record["values"].items()}
    with open(seed1 / "sharpness.json", "w") as f:
        json.dump({"values": other}, f)
    assert cli.main(["report", "--output", str(output)]) == 0
    table = (output / "results.md").read_text()
    for name, value in record["values"].items():
        pair = np.array([value, other[name]])
        cell = f"{pair.mean():.4g} ± {pair.std(ddof=1):.2g}"
        assert cell in table, (name, cell, table)
    summary = json.loads((output / "results.json").read_text())
    worst = [r for r in summary["summary"] if r["metric"] == "sharpness_worst_case"]
    assert worst[0]["seeds"] == [0, 1]
    # A damaged sharpness.json is named in a warning and left out; the report goes on.
    (seed1 / "sharpness.json").write_text("{not json")
    assert cli.main(["report", "--output", str(output)]) == 0
    err = capsys.readouterr().err
    assert f"bisam-keras report: warning: {seed1 / 'sharpness.json'} cannot be read" in err
    assert f"{record['values']['worst_case']:.4g} ± 0" in (output / "results.md").read_text()


def test_a_report_without_sharpness_has_no_sharpness_table(tmp_path):
    assert runs.report(str(tmp_path), [], []) == ""


@pytest.mark.parametrize(
    "make, code, message",
    [
        (lambda d: d / "missing", 2, "RUN_DIR must be a run folder. Received: '{d}'"),
        (lambda d: d, 1, "{d} is not a finished run with a model: no result.json"),
    ],
)
def test_a_folder_that_is_not_a_finished_run_is_one_line(tmp_path, capsys, make, code, message):
    target = make(tmp_path)
    with pytest.raises(SystemExit) as info:
        cli.main(["sharpness", str(target)])
    assert info.value.code == code
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(f"bisam-keras sharpness: error: {message.format(d=target)}")


def test_a_run_without_best_keras_is_refused_before_measuring(tmp_path, capsys):
    for name in ("result.json", "config.json"):
        (tmp_path / name).write_text("{}")
    with pytest.raises(SystemExit) as info:
        cli.main(["sharpness", str(tmp_path)])
    assert info.value.code == 1
    assert "no best.keras" in _one_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    "flag, value",
    [("--num-examples", "0"), ("--rho", "-1"), ("--sigma", "nan"), ("--split", "test")],
)
def test_bad_flags_name_the_flag_and_the_value(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as info:
        cli.main(["sharpness", str(tmp_path), flag, value])
    assert info.value.code == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith(f"bisam-keras sharpness: error: argument {flag}:") and value in err
