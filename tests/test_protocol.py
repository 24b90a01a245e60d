"""The reporting protocol and the method table, against hand-made inputs."""

import math

import keras
import numpy as np
import pytest

import bisam_keras as bk
from bisam_keras.experiments import methods, presets, protocol

HISTORY = {
    "val_accuracy": [0.50, 0.70, 0.65, 0.70, 0.69],
    "test_accuracy": [0.48, 0.66, 0.67, 0.71, 0.70],
    "test_top5_accuracy": [0.9, 0.95, 0.96, 0.97, 0.98],
    "loss": [2.0, 1.5, 1.2, 1.0, 0.9],
}


def test_best_epoch_is_first_maximum_of_validation_accuracy():
    # Epochs 2 and 4 tie at 0.70: the paper's rule keeps the first.
    assert protocol.best_epoch(HISTORY) == 1
    assert protocol.best_epoch(HISTORY, monitor="test_accuracy") == 3


def test_selected_metrics_reads_test_metrics_at_best_validation_epoch():
    selected = protocol.selected_metrics(HISTORY)
    assert selected == {
        "epoch": 2,
        "val_accuracy": 0.70,
        "test_accuracy": 0.66,
        "test_top5_accuracy": 0.95,
    }


def test_best_epoch_ignores_nan_and_rejects_missing_monitor():
    assert protocol.best_epoch({"val_accuracy": [math.nan, 0.2, 0.1]}) == 1
    with pytest.raises(ValueError, match="monitor"):
        protocol.best_epoch({"loss": [1.0]})


def test_mean_std_matches_numpy_sample_std():
    values = [0.9428, 0.9401, 0.9466, 0.9390]
    mean, std = protocol.mean_std(values)
    # float64 sums of 4 values < 1: gamma_64(4) * 4 < 2e-15 in the worst case, and both
    # compute the same two-pass formula in the same order: 1e-15.
    assert mean == pytest.approx(np.mean(values), abs=1e-15)
    assert std == pytest.approx(np.std(values, ddof=1), abs=1e-15)
    assert protocol.mean_std([0.5]) == (0.5, 0.0)


def _result(model, method, seed, acc):
    return {
        "dataset": "cifar10",
        "model": model,
        "method": method,
        "seed": seed,
        "test_accuracy": acc,
    }


def test_aggregate_groups_by_configuration_in_paper_order():
    results = [
        _result("resnet56", "sam", 0, 0.94),
        _result("resnet56", "bisam-neglog", 0, 0.95),
        _result("resnet56", "sam", 1, 0.92),
        _result("resnet56", "bisam-neglog", 1, 0.93),
        _result("resnet56", "sgd", 0, 0.90),
    ]
    rows = protocol.aggregate(results)
    assert [r["method"] for r in rows] == ["sgd", "sam", "bisam-neglog"]
    sam = rows[1]
    # float64 mean and std of two values: a few ulps (pytest.approx: rel 1e-6).
    assert sam["mean"] == pytest.approx(0.93)
    assert sam["std"] == pytest.approx(np.std([0.94, 0.92], ddof=1))
    assert sam["seeds"] == [0, 1]


def test_markdown_table_has_paper_layout_and_bold_best():
    rows = protocol.aggregate(
        [
            _result("resnet56", "sam", 0, 0.9409),
            _result("resnet56", "bisam-neglog", 0, 0.9428),
            _result("wrn28_2", "sam", 0, 0.9600),
            _result("wrn28_2", "bisam-neglog", 0, 0.9602),
        ]
    )
    table = protocol.markdown_table(rows)
    lines = table.splitlines()
    assert "| Model | SAM | BiSAM (-log) |" in lines
    assert "| resnet56 | 94.09 ± 0.00 | **94.28 ± 0.00** |" in lines
    assert "| wrn28_2 | 96.00 ± 0.00 | **96.02 ± 0.00** |" in lines
    csv_text = protocol.csv_table(rows)
    assert csv_text.splitlines()[0] == "dataset,model,method,metric,mean,std,seeds"
    assert len(csv_text.splitlines()) == 5


@pytest.mark.parametrize(
    "method, cls, adaptive, efficient, bound",
    [
        ("sgd", keras.optimizers.SGD, False, False, None),
        ("sam", bk.SAM, False, False, None),
        ("bisam-neglog", bk.BiSAM, False, False, "neglog"),
        ("bisam-tanh", bk.BiSAM, False, False, "tanh"),
        ("asam", bk.SAM, True, False, None),
        ("a-bisam-neglog", bk.BiSAM, True, False, "neglog"),
        ("a-bisam-tanh", bk.BiSAM, True, False, "tanh"),
        ("esam", bk.SAM, False, True, None),
        ("e-bisam-neglog", bk.BiSAM, False, True, "neglog"),
        ("e-bisam-tanh", bk.BiSAM, False, True, "tanh"),
    ],
)
def test_every_method_builds_the_paper_algorithm(method, cls, adaptive, efficient, bound):
    opt = methods.make_optimizer(method, keras.optimizers.SGD(0.1), rho=0.05)
    assert type(opt) is cls
    if cls is keras.optimizers.SGD:
        return
    assert opt.adaptive is adaptive
    assert (opt.swp_probability, opt.sds_fraction) == ((0.5, 0.5) if efficient else (1.0, 1.0))
    if bound:
        assert opt.lower_bound == bound
        assert opt.mu == {"neglog": 1.5, "tanh": 10.0}[bound]


def test_unknown_method_is_named():
    with pytest.raises(ValueError, match="method='adam'"):
        methods.make_optimizer("adam", keras.optimizers.SGD())


def test_paper_cifar_preset_matches_section_4_1():
    p = presets.PRESETS["paper-cifar"]
    assert (p["lr"], p["momentum"], p["weight_decay"], p["batch_size"]) == (0.1, 0.9, 5e-4, 128)
    assert (p["epochs"], p["sgd_epochs"], p["label_smoothing"]) == (200, 400, 0.1)
    assert (p["rho"], p["adaptive_rho"], p["mu"], p["alpha"]) == (
        0.05,
        2.0,
        {"neglog": 1.5, "tanh": 10.0},
        0.1,
    )
    assert (p["swp_probability"], p["sds_fraction"]) == (0.5, 0.5)


def test_paper_imagenet_preset_matches_section_4_1():
    # "rho = 0.05 ... 90 epochs, peak learning rate 0.2, batch size 512 ...
    # mSAM with micro batch size m = 128 ... mu = 5 for BiSAM (-log) and
    # mu = 20 and alpha = 0.1 for BiSAM (tanh)."
    p = presets.PRESETS["paper-imagenet"]
    assert (p["lr"], p["batch_size"], p["epochs"], p["micro_batch_size"]) == (0.2, 512, 90, 128)
    assert (p["rho"], p["mu"], p["alpha"]) == (0.05, {"neglog": 5.0, "tanh": 20.0}, 0.1)
    assert (p["momentum"], p["weight_decay"], p["label_smoothing"]) == (0.9, 5e-4, 0.1)


def test_paper_finetune_preset_matches_section_4_2():
    # "pretrained ViT-B/16 ... AdamW ... no weight decay ... linear learning
    # rate schedule and gradient clipping with global norm 1 ... peak learning
    # rate 1e-4 and batch size 512 ... 500 steps with a warmup step of 100.
    # For Flowers mu = 4 (-log), mu = 20 (tanh); for Pets mu = 6 (-log),
    # mu = 20 (tanh)."
    p = presets.PRESETS["paper-finetune"]
    assert (p["model"], p["pretrained"], p["optimizer"], p["weight_decay"]) == (
        "vit_b16",
        True,
        "adamw",
        0.0,
    )
    assert (p["schedule"], p["lr"], p["warmup_steps"], p["steps"]) == (
        "linear-warmup",
        1e-4,
        100,
        500,
    )
    assert (p["batch_size"], p["global_clipnorm"]) == (512, 1.0)
    paper = {"oxford_flowers102": (4.0, 20.0), "oxford_iiit_pet": (6.0, 20.0)}
    for dataset, (neglog, tanh) in paper.items():
        assert presets.preset_mu(p, "neglog", dataset) == neglog
        assert presets.preset_mu(p, "tanh", dataset) == tanh
    # Another dataset gets the preset's default, Flowers' values.
    assert (presets.preset_mu(p, "neglog", "cifar10"), presets.preset_mu(p, "tanh", "cifar10")) == (
        4.0,
        20.0,
    )


@pytest.mark.parametrize(
    "flags, mu",
    [
        (["--method", "bisam-neglog"], 4.0),
        (["--method", "bisam-tanh"], 20.0),
        (["--method", "bisam-neglog", "--dataset", "oxford_iiit_pet"], 6.0),
        (["--method", "e-bisam-neglog", "--dataset", "oxford_iiit_pet"], 6.0),
        (["--method", "bisam-tanh", "--dataset", "oxford_iiit_pet"], 20.0),
        (["--method", "bisam-neglog", "--dataset", "oxford_iiit_pet", "--mu", "3"], 3.0),
        (["--method", "sam", "--dataset", "oxford_iiit_pet"], None),
    ],
)
def test_paper_finetune_picks_mu_by_dataset_and_bound(flags, mu):
    from bisam_keras import cli

    args = cli.build_parser().parse_args(["train", "--preset", "paper-finetune", *flags])
    (config,) = cli.make_configs(args)
    assert config.mu == mu


def test_compare_picks_mu_per_method_on_pets():
    from bisam_keras import cli

    args = cli.build_parser().parse_args(
        ["compare", "--preset", "paper-finetune", "--dataset", "oxford_iiit_pet",
         "--methods", "sam", "bisam-neglog", "bisam-tanh"]
    )  # fmt: skip
    sam, neglog, tanh = cli.make_configs(args, several=True)
    assert (sam.mu, neglog.mu, tanh.mu) == (None, 6.0, 20.0)
    assert neglog.steps == 500 and neglog.pretrained is True and neglog.model == "vit_b16"
