"""Hyper-parameter presets that reproduce the paper's experiments.

`paper-cifar` (Section 4.1): SGD with momentum 0.9 and weight decay 5e-4,
batch 128, cosine learning rate from 0.1, label smoothing 0.1, 200 epochs for
the sharpness-aware methods and 400 for SGD (the same gradient budget),
`rho = 0.05`, `mu = 1.5` for -log and `mu = 10, alpha = 0.1` for tanh;
`rho = 2` for the adaptive methods (Appendix A.1) and `beta = gamma = 0.5` for
the efficient ones (Appendix A.2).

Both follow the authors' published training script (LIONS-EPFL/BiSAM,
`train.py`) where it is more precise than the paper's text (see
`docs/hyperparameters.md`): their label-smoothing convention, weight decay at
`w` through PyTorch's momentum, the cosine rate stepped once per epoch, the
authors' model variants and, for CIFAR, Cutout, the fixed seed-42 validation
split and statistics from all 50,000 training images. `AUTHORS_TRAINING`
holds these settings; each is one flag away from Keras' behaviour.

`paper-imagenet` (Section 4.1): 90 epochs, peak learning rate 0.2, batch 512,
mSAM with micro-batches of 128, `mu = 5` for -log and `mu = 20, alpha = 0.1`
for tanh.

`paper-finetune` (Section 4.2): an ImageNet-pretrained ViT-B/16, AdamW
without weight decay, linear schedule with 100 warm-up steps to a peak of
1e-4, global-norm clipping at 1, batch 512, 500 steps; `mu` by dataset:
`4` (-log) / `20` (tanh) on Flowers, `6` (-log) / `20` (tanh) on Pets.
"""

AUTHORS_TRAINING = {
    "label_smoothing_convention": "authors",
    "weight_decay_mode": "at-w",
    "momentum_convention": "torch",
    "schedule": "cosine-epoch",
    "model_variant": "authors",
}
"""The settings of the authors' `train.py` that `paper-cifar` and `paper-imagenet` share."""

AUTHORS_CIFAR_DATA = {
    "cutout": True,
    "validation_split": "authors",
    "stats_from": "all",
}
"""The authors' CIFAR data pipeline (`utility/cifar.py`); their code has no ImageNet one."""

PRESETS = {
    "paper-cifar": {
        "optimizer": "sgd",
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "batch_size": 128,
        "label_smoothing": 0.1,
        "epochs": 200,
        "sgd_epochs": 400,
        "rho": 0.05,
        "adaptive_rho": 2.0,
        "mu": {"neglog": 1.5, "tanh": 10.0},
        "alpha": 0.1,
        "swp_probability": 0.5,
        "sds_fraction": 0.5,
        "model": "resnet56",
        "dataset": "cifar10",
        **AUTHORS_TRAINING,
        **AUTHORS_CIFAR_DATA,
    },
    "paper-imagenet": {
        "optimizer": "sgd",
        "lr": 0.2,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "batch_size": 512,
        "label_smoothing": 0.1,
        "epochs": 90,
        "sgd_epochs": 90,
        "rho": 0.05,
        "adaptive_rho": 2.0,
        "mu": {"neglog": 5.0, "tanh": 20.0},
        "alpha": 0.1,
        "micro_batch_size": 128,
        "swp_probability": 0.5,
        "sds_fraction": 0.5,
        "model": "ResNet50",
        "dataset": "imagenet2012",
        **AUTHORS_TRAINING,
    },
    "paper-finetune": {
        "optimizer": "adamw",
        "lr": 1e-4,
        "weight_decay": 0.0,
        "batch_size": 512,
        "schedule": "linear-warmup",
        "warmup_steps": 100,
        "steps": 500,
        "pretrained": True,
        "global_clipnorm": 1.0,
        "label_smoothing": 0.0,
        "rho": 0.05,
        "adaptive_rho": 2.0,
        "mu": {"neglog": 4.0, "tanh": 20.0},
        "mu_by_dataset": {
            "oxford_flowers102": {"neglog": 4.0, "tanh": 20.0},
            "oxford_iiit_pet": {"neglog": 6.0, "tanh": 20.0},
        },
        "alpha": 0.1,
        "swp_probability": 0.5,
        "sds_fraction": 0.5,
        "model": "vit_b16",
        "dataset": "oxford_flowers102",
    },
}
"""The paper's hyper-parameters, by `--preset` name.

Each preset maps `RunConfig` fields to values (for fine-tuning `steps`, the
paper's length in optimizer steps, and `pretrained`), plus `sgd_epochs` (the
epochs of the `sgd` method), `adaptive_rho` (the `rho` of the adaptive
methods), `mu` as `{"neglog": ..., "tanh": ...}`, optionally `mu_by_dataset`
(`{dataset: {"neglog": ..., "tanh": ...}}`, the paper's per-dataset values,
which win over `mu` for those datasets; see `preset_mu`), and the default
`model` and `dataset`. Explicit flags override a preset.
"""


def preset_mu(preset, bound, dataset):
    """The preset's `mu` of `bound` (`"neglog"` or `"tanh"`) on `dataset`.

    `mu_by_dataset[dataset]` when the preset has values for that dataset,
    else `mu` (for `paper-finetune`, Flowers' values).

    Args:
        preset: a value of `PRESETS` (a dict).
        bound: `"neglog"` or `"tanh"`.
        dataset: the run's dataset name.

    Returns:
        The temperature, a float.
    """
    return preset.get("mu_by_dataset", {}).get(dataset, preset["mu"])[bound]
