"""bisam_keras.experiments.study_memorisation (and its command line,
benchmarks/memorisation.py): what share of the wrong labels a run has learnt.

The shares are checked against counts done by hand; the true labels against
the data's own noise draw (digits, offline); the whole script on a finished
digits run, against the model's predictions recomputed here.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from bisam_keras.experiments import (
    study,
    study_memorisation,
    study_report,
    study_runs,
)
from bisam_keras.testing import benchmark_script

memorisation = benchmark_script("memorisation")
reproduce = benchmark_script("reproduce")


def test_fractions_against_hand_counts():
    true = [0, 1, 2, 3, 4, 5, 6, 7]
    given = [0, 1, 2, 3, 9, 9, 9, 9]  # the last four labels replaced
    predicted = [0, 1, 5, 3, 9, 5, 6, 0]
    # clean (0-3): right on 0, 1, 3 -> 3/4. noisy (4-7): 4 predicts the wrong
    # label 9, 5 and 6 the true one, 7 neither. With K = 10 classes, a model
    # blind to the noise draw would hit the wrong label on (1 - 2/4) / 9 of them.
    out = study_memorisation.fractions(predicted, given, true, 10)
    assert out == {
        "num_clean": 4,
        "num_noisy": 4,
        "clean_accuracy": 0.75,
        "noisy_memorised": 0.25,
        "noisy_true": 0.5,
        "noisy_other": 0.25,
        "noisy_chance": 0.5 / 9,
    }
    clean_only = study_memorisation.fractions([1, 2], [1, 3], [1, 3], 10)
    assert clean_only["num_noisy"] == 0 and clean_only["noisy_memorised"] is None
    with pytest.raises(ValueError, match="same length. Received: 2, 3, 3"):
        study_memorisation.fractions([0, 1], [0, 1, 2], [0, 1, 2], 10)


def _digits_config(tmp_path, epochs=1):
    (config,) = study.make_configs(
        None, str(tmp_path / "runs"), "resnet20", 300, epochs, (0,), (0.4,), ("sam",),
        dataset="digits", preset=None,
    )  # fmt: skip
    return config


def test_true_labels_are_the_noise_draws_own(tmp_path):
    """The examples whose two labels differ make up the share the data reports
    as corrupted, and the true labels are the data set's own (digits' labels,
    read from scikit-learn, not through the pipeline)."""
    from sklearn.datasets import load_digits

    config = _digits_config(tmp_path)
    x, given, true, fraction = study_memorisation.labelled_train_part(config)
    noisy = given != true
    assert len(x) == len(given) == len(true) == 270  # 300 - 10% validation
    assert noisy.mean() == pytest.approx(fraction) and fraction == pytest.approx(0.4, abs=0.01)
    # Every digits image is 8x8 with 17 grey levels (0-16, stored as 0-1): match
    # each training image to the data set's images and their labels.
    digits = load_digits()
    by_pixels = {}
    for image, label in zip(digits.images, digits.target):
        by_pixels.setdefault(image.astype(np.uint8).tobytes(), set()).add(int(label))
    mean, std = _stats(config)
    pixels = np.rint(16 * (x[..., 0] * std + mean)).astype(np.uint8)
    for image, label in zip(pixels, true):
        assert int(label) in by_pixels[image.tobytes()]


def _stats(config):
    from bisam_keras import data

    splits = data.load(config.dataset, **study_runs.load_kwargs(config))
    return float(splits.mean[0]), float(splits.std[0])


def test_script_on_a_finished_run(tmp_path):
    import keras

    from bisam_keras.experiments import runner

    config = _digits_config(tmp_path)
    study.run_all([config], log=lambda *_: None)
    docs = tmp_path / "results.md"
    study_report.report(config.output, str(docs), command="python x.py", log=lambda *_: None)
    assert "Not measured yet" in docs.read_text()
    memorisation.main(["--output", config.output, "--docs", str(docs)])
    (row,) = json.loads((Path(config.output) / "memorisation.json").read_text())
    # Independently: the model's predictions on the same images.
    x, given, true, _ = study_memorisation.labelled_train_part(config)
    model = keras.saving.load_model(str(Path(config.run_dir()) / "best.keras"), compile=False)
    # The script's batch size: the same kernels, so no argmax can flip on a near-tie.
    predicted = model.predict(x, batch_size=500, verbose=0).argmax(-1)
    noisy = given != true
    assert row["clean_accuracy"] == pytest.approx(np.mean(predicted[~noisy] == given[~noisy]))
    assert row["noisy_memorised"] == pytest.approx(np.mean(predicted[noisy] == given[noisy]))
    assert row["noisy_true"] == pytest.approx(np.mean(predicted[noisy] == true[noisy]))
    assert row["noisy_chance"] == pytest.approx(np.mean(predicted[noisy] != true[noisy]) / 9)
    result = runner.load_results(config.output)[0]
    assert row["epoch"] == result["epoch"] and row["test_accuracy"] == result["test_accuracy"]
    text = docs.read_text()
    assert f"{100 * row['noisy_memorised']:.1f}%" in text and "Not measured yet" not in text
    # The report keeps the section; without best.keras the saved row is used.
    reproduce.main(["--report-only", "--output", config.output, "--docs", str(docs)])
    assert f"{100 * row['noisy_memorised']:.1f}%" in docs.read_text()
    # --data-dir replaces the folder the run read its data from.
    args = ["--output", config.output, "--docs", str(docs)]
    with pytest.raises(ValueError, match="nowhere"):
        memorisation.main([*args, "--data-dir", "/nowhere"])
    (Path(config.run_dir()) / "best.keras").unlink()
    memorisation.main(["--output", config.output, "--docs", str(docs)])
    assert json.loads((Path(config.output) / "memorisation.json").read_text()) == [row]
