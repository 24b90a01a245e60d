"""`bisam-keras` end to end on small real data: train, resume, compare, report."""

import json
import math
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
    # settings -log BiSAM does not use are recorded as unused
    assert config["swp_probability"] is config["sds_fraction"] is config["alpha"] is None
    assert config["rho"] == 0.05
    # epochs numbered from 1, as in result.json and the printed summary
    rows = open(os.path.join(run_dir, "history.csv"), newline="").read().split("\n")
    assert [row.split(",")[0] for row in rows] == ["epoch", "1", "2", "3", ""]
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
    # A resumed run repeats the same float32 operations, in the same order, as the straight
    # run on this machine (same kernels, restored weights and optimizer state), so they agree
    # to rounding: accuracies (counts / N) exactly (a flipped prediction would be >= 1/N), the
    # loss to rtol 1e-4 (the epoch mean of a running float32 sum over <= 1e3 batches:
    # gamma(1e3) = 6e-5 of its terms, all >= 0, should the order of the metric's sum differ).
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


# --------------------------------------------------------------------------- #
# --steps: an exact number of optimizer steps (the paper's fine-tuning length).
# --------------------------------------------------------------------------- #

# Digits with --subset 300: 30 validation and 270 training examples, so
# batches of 64 give ceil(270 / 64) = 5 steps per epoch (4 of 64 and one of 14).
STEPS_BASE = dict(dataset="digits", subset=300, batch_size=64, model="resnet20", verbose=0)


class _StepRecorder(keras.callbacks.Callback):
    """Counts the train batches of each epoch and reads the optimizer at the end."""

    def __init__(self):
        super().__init__()
        self.batches = {}
        self.learning_rates = []

    def on_train_batch_begin(self, batch, logs=None):
        self.learning_rates.append(float(self._inner().learning_rate))

    def on_train_batch_end(self, batch, logs=None):
        self.batches[self.epoch] = self.batches.get(self.epoch, 0) + 1

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_end(self, logs=None):
        self.iterations = int(self.model.optimizer.iterations)
        self.schedule = self._inner()._learning_rate.get_config()

    def _inner(self):
        return getattr(self.model.optimizer, "inner_optimizer", self.model.optimizer)


def test_steps_trains_exactly_that_many_steps_with_the_schedule_over_them(tmp_path):
    # 7 steps at 5 a epoch: epochs of 5 and 2 steps, both evaluated.
    config = RunConfig(
        **STEPS_BASE,
        method="sgd",
        optimizer="adamw",
        lr=0.01,
        weight_decay=0.0,
        schedule="linear-warmup",
        warmup_steps=2,
        steps=7,
        output=str(tmp_path),
    )
    recorder = _StepRecorder()
    result = runner.run(config, callbacks=[recorder])
    assert recorder.batches == {0: 5, 1: 2}
    assert recorder.iterations == 7
    assert (recorder.schedule["warmup_steps"], recorder.schedule["total_steps"]) == (2, 7)
    # Linear warm-up over 2 steps to 0.01, then linear decay to 0 at step 7:
    # the rate of step t (0-based) is 0.01 * t / 2 for t < 2, else
    # 0.01 * (1 - (t - 2) / 5).
    expected = [0.0, 0.005, 0.01, 0.008, 0.006, 0.004, 0.002]
    # The schedule's float32 arithmetic: 3-4 roundings of values <= 0.01 (4 u = 2.4e-7 rel.).
    np.testing.assert_allclose(recorder.learning_rates, expected, rtol=1e-6, atol=1e-9)
    history = json.load(open(os.path.join(config.run_dir(), "history.json")))
    assert len(history["val_accuracy"]) == len(history["test_accuracy"]) == 2
    assert (result["epochs_run"], result["steps"]) == (2, 7)
    best = int(np.argmax(history["val_accuracy"]))
    assert result["test_accuracy"] == history["test_accuracy"][best]


@pytest.mark.slow
def test_steps_run_resumes_to_the_same_result(tmp_path):
    # 12 steps at 5 a epoch: epochs of 5, 5 and 2 steps. Interrupted after the
    # first epoch, the resumed run does the remaining 5 + 2 steps and ends
    # with the history of an uninterrupted run.
    base = dict(STEPS_BASE, method="sam", steps=12)
    straight_recorder = _StepRecorder()
    straight = runner.run(
        RunConfig(output=str(tmp_path / "a"), **base), callbacks=[straight_recorder]
    )
    assert straight_recorder.batches == {0: 5, 1: 5, 2: 2}
    interrupted = RunConfig(output=str(tmp_path / "b"), **base)
    with pytest.raises(KeyboardInterrupt):
        runner.run(interrupted, callbacks=[_InterruptAfterFirstEpoch()])
    resumed_recorder = _StepRecorder()
    resumed = runner.run(interrupted, resume=True, callbacks=[resumed_recorder])
    assert resumed_recorder.batches == {1: 5, 2: 2}
    assert resumed_recorder.iterations == straight_recorder.iterations == 12
    a = json.load(open(os.path.join(RunConfig(output=str(tmp_path / "a"), **base).run_dir(),
                                    "history.json")))  # fmt: skip
    b = json.load(open(os.path.join(interrupted.run_dir(), "history.json")))
    assert len(b["loss"]) == len(a["loss"]) == 3
    # A resumed run repeats the same float32 operations, in the same order, as the straight
    # run on this machine (same kernels, restored weights and optimizer state), so they agree
    # to rounding: accuracies (counts / N) exactly (a flipped prediction would be >= 1/N), the
    # loss to rtol 1e-4 (the epoch mean of a running float32 sum over <= 1e3 batches:
    # gamma(1e3) = 6e-5 of its terms, all >= 0, should the order of the metric's sum differ).
    np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-4)
    np.testing.assert_allclose(b["val_accuracy"], a["val_accuracy"], atol=1e-6)
    assert resumed["test_accuracy"] == pytest.approx(straight["test_accuracy"], abs=1e-6)
    assert resumed["steps"] == straight["steps"] == 12


class _InterruptAfterFirstEpoch(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            raise KeyboardInterrupt


def test_steps_and_epochs_flags():
    parse = cli.build_parser().parse_args
    (config,) = cli.make_configs(parse(["train", "--steps", "30"]))
    assert config.steps == 30
    (config,) = cli.make_configs(parse(["train"]))
    assert (config.steps, config.epochs) == (None, 10)
    # The preset's 500 steps give way to an explicit --epochs or --steps.
    (config,) = cli.make_configs(parse(["train", "--preset", "paper-finetune"]))
    assert config.steps == 500
    (config,) = cli.make_configs(parse(["train", "--preset", "paper-finetune", "--epochs", "3"]))
    assert (config.steps, config.epochs) == (None, 3)
    (config,) = cli.make_configs(parse(["train", "--preset", "paper-finetune", "--steps", "20"]))
    assert config.steps == 20


def test_verify_flag():
    """`--verify none` is `verify=None`; the default scans the records; a change of
    `verify` alone may resume a run (it does not change the run's numbers)."""
    parse = cli.build_parser().parse_args
    (config,) = cli.make_configs(parse(["train"]))
    assert config.verify == "records"
    for flag, value in (("full", "full"), ("records", "records"), ("none", None)):
        (config,) = cli.make_configs(parse(["train", "--verify", flag]))
        assert config.verify == value
    saved = runner.recorded_config(RunConfig(verify="full"))
    assert runner.config_differences(saved, RunConfig(verify=None)) == []
    with pytest.raises(SystemExit):
        parse(["train", "--verify", "fast"])


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--steps", "0"], "--steps"),
        (["--steps", "-5"], "--steps"),
        (["--epochs", "3", "--steps", "5"], "--epochs or --steps, not both. Received: epochs=3"),
        (["--micro-batch-size", "48"], "--micro-batch-size must divide --batch-size"),
        (["--pretrained"], "--pretrained=True needs a model with pretrained weights"),
        (["--preset", "paper-finetune", "--model", "resnet20"], "'resnet20' has none"),
        # Infinite and NaN values, refused by the flag's type.
        (["--weight-decay", "inf"], "argument --weight-decay: must be a finite number >= 0"),
        (["--rho", "inf"], "argument --rho: must be a finite number >= 0, got inf"),
        (["--lr", "nan"], "argument --lr: must be a finite number >= 0, got nan"),
        (["--momentum", "1e400"], "argument --momentum: must be a finite number >= 0"),
        (["--mu", "inf"], "argument --mu: must be a finite number, got inf"),
        (["--alpha=-inf"], "argument --alpha: must be a finite number, got -inf"),
        # The protocol selects the epoch by validation accuracy: it needs a validation part.
        (["--validation-fraction", "0"], "--validation-fraction must be in (0, 1)"),
        # Splits that the protocol cannot use, found after loading, before training.
        (["--subset", "5"], "--validation-fraction=0.1 of 5 training examples holds out no"),
        (["--subset", "4", "--validation-fraction", "0.5"], "the test split of 'digits' is empty"),
    ],
)
def test_bad_run_flags_are_named(tmp_path, capsys, args, expected):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", *args, "--output", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"steps": 0}, "`steps` must be None or an int >= 1. Received: steps=0"),
        ({"steps": 2.5}, "`steps` must be None or an int >= 1. Received: steps=2.5"),
        ({"steps": True}, "`steps` must be None or an int >= 1. Received: steps=True"),
        ({"micro_batch_size": 0}, "Received: micro_batch_size=0"),
        ({"batch_size": 128, "micro_batch_size": 48}, "micro_batch_size=48, batch_size=128"),
        ({"pretrained": "yes"}, "`pretrained` must be a bool. Received: pretrained='yes'"),
        ({"model": "wrn28_2", "pretrained": True}, "Received: model='wrn28_2', pretrained=True"),
        ({"verify": "none"}, "must be one of ['records', 'full', None]. Received: verify='none'"),
        ({"verify": False}, "Received: verify=False"),
        (
            {"weight_decay": math.inf},
            "`weight_decay` must be a finite number >= 0. Received: weight_decay=inf",
        ),
        ({"rho": math.inf}, "`rho` must be a finite number >= 0. Received: rho=inf"),
        ({"lr": -0.1}, "`lr` must be a finite number >= 0. Received: lr=-0.1"),
        ({"mu": math.nan}, "`mu` must be None or a finite number. Received: mu=nan"),
        ({"global_clipnorm": math.inf}, "Received: global_clipnorm=inf"),
        ({"alpha": -math.inf}, "`alpha` must be a finite number. Received: alpha=-inf"),
        ({"label_noise": math.nan}, "Received: label_noise=nan"),
        (
            {"validation_fraction": 0.0},
            "`validation_fraction` must be in (0, 1): the run "
            "selects its epoch by validation accuracy. Received: validation_fraction=0.0",
        ),
        ({"validation_fraction": 1.0}, "Received: validation_fraction=1.0"),
    ],
)
def test_run_config_rejects_bad_values(fields, message):
    with pytest.raises(ValueError) as info:
        RunConfig(**fields).validate()
    assert message in str(info.value)


# --------------------------------------------------------------------------- #
# --pretrained: ImageNet weights for the models that have them.
# --------------------------------------------------------------------------- #


@pytest.fixture
def rgb_folder(tmp_path):
    """A small offline folder of 32x32 RGB images (read as `--dataset cifar10`)."""
    from bisam_keras import data

    rng = np.random.default_rng(0)
    path = str(tmp_path / "rgb")
    classes = [str(i) for i in range(10)]
    for split, n in (("train", 40), ("test", 10)):
        images = rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8)
        data.write_tfrecord_folder(path, images, np.arange(n) % 10, classes, split=split)
    return path


class _BuildCalled(Exception):
    pass


@pytest.mark.parametrize(
    "args, pretrained",
    [
        (["--preset", "paper-finetune"], True),
        (["--preset", "paper-finetune", "--no-pretrained"], False),
        (["--preset", "paper-finetune", "--model", "MobileNetV3Small"], True),
        (["--model", "MobileNetV3Small", "--pretrained"], True),
        (["--model", "MobileNetV3Small"], False),
    ],
)
def test_pretrained_reaches_the_model_build(tmp_path, rgb_folder, monkeypatch, args, pretrained):
    calls = []

    def spy(name, num_classes, input_shape=None, **kwargs):
        calls.append((name, kwargs))
        raise _BuildCalled

    monkeypatch.setattr(runner.models_lib, "build", spy)
    flags = ["--dataset", "cifar10", "--data-dir", rgb_folder, "--output", str(tmp_path / "o")]
    with pytest.raises(_BuildCalled):
        cli.main(["train", *args, *flags, "--verbose", "0"])
    ((name, kwargs),) = calls
    assert kwargs == ({"pretrained": True} if pretrained else {})
    (config,) = cli.make_configs(cli.build_parser().parse_args(["train", *args, *flags]))
    assert config.pretrained is pretrained and config.model == name
    assert not os.path.exists(tmp_path / "o")  # nothing to --resume from a run that never started


def test_unreachable_vit_weights_surface_through_the_cli(tmp_path, rgb_folder, monkeypatch):
    # The preset asks for the pretrained ViT-B/16. The download is made to fail
    # at once, as it does without network (a firewall could make a real
    # attempt wait for timeouts): the package's own error reaches the user.
    keras_hub = pytest.importorskip("keras_hub")
    attempts = []

    def unreachable(preset, *args, **kwargs):
        attempts.append(preset)
        raise ConnectionError(f"cannot reach kaggle.com for {preset}")

    monkeypatch.setattr(keras_hub.models.ViTBackbone, "from_preset", unreachable)
    out = str(tmp_path / "o")
    flags = ["--dataset", "cifar10", "--data-dir", rgb_folder, "--output", out, "--verbose", "0"]
    with pytest.raises(RuntimeError, match=r"Could not fetch the keras-hub preset.*kagglehub"):
        cli.main(["train", "--preset", "paper-finetune", *flags])
    assert attempts == ["vit_base_patch16_224_imagenet"]
    assert not os.path.exists(out)


def _network_available(host):
    import socket

    try:
        socket.create_connection((host, 443), timeout=2).close()
    except OSError:
        return False
    return True


def test_unreachable_application_weights_fail_fast_through_the_runner(
    tmp_path, rgb_folder, monkeypatch
):
    # A real download attempt, bounded by the models module's socket timeout.
    import time

    from bisam_keras.models import applications

    if _network_available("storage.googleapis.com"):
        pytest.skip("the ImageNet weights can be downloaded here")
    cache = os.path.join(os.path.expanduser("~"), ".keras", "models")
    if os.path.isdir(cache) and any("mobilenet_v3_small" in f.lower() for f in os.listdir(cache)):
        pytest.skip("the ImageNet weights are cached here")
    monkeypatch.setattr(applications, "DOWNLOAD_TIMEOUT_S", 3)
    config = RunConfig(
        dataset="cifar10",
        data_dir=rgb_folder,
        model="MobileNetV3Small",
        pretrained=True,
        output=str(tmp_path / "o"),
        verbose=0,
    )
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match=r"Could not fetch the ImageNet weights.*weights_path="):
        runner.run(config)
    assert time.perf_counter() - start < 60
    assert not os.path.exists(config.run_dir())


# --------------------------------------------------------------------------- #
# mSAM through the CLI: the training split drops its partial last batch.
# --------------------------------------------------------------------------- #


def test_micro_batches_train_on_whole_batches_only(tmp_path):
    # 270 training examples in batches of 64: 4 whole batches (the 14 left
    # over are dropped, a different 14 each epoch), 2 micro-batches of 32 each.
    out = str(tmp_path / "runs")
    args = [*SMALL, "--epochs", "1", "--micro-batch-size", "32", "--output", out]
    assert cli.main(["train", *args]) == 0
    (result,) = runner.load_results(out)
    assert result["steps"] == 4 and result["epochs_run"] == 1
    assert (result["num_train"], result["num_validation"]) == (270, 30)
    assert 0.0 <= result["test_accuracy"] <= 1.0
