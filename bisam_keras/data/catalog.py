"""The datasets `bisam_keras.data.load` knows, and how each one is prepared.

`style` picks the preprocessing:

- `"small"`: fixed-size images (CIFAR, digits), decoded once and cached in
  memory; training augmentation is `cifar_augment` (pad 4, random crop, flip).
- `"imagenet"`: variable-size images, decoded per epoch; training uses
  `imagenet_train_preprocess`, evaluation `imagenet_eval_preprocess`.

`mean`/`std` are only set where computing them needs a pass over a very large
training set (ImageNet): the usual ImageNet training-set statistics, in
0-255 pixel units. Every other dataset computes them from its training part.
"""

import dataclasses

DEFAULT_IMAGE_SIZE = 224


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """How one dataset is read (tfds split names) and preprocessed."""

    train_split: str
    test_split: str
    style: str
    augment: bool = True
    mean: tuple | None = None
    std: tuple | None = None


DATASETS = {
    "digits": DatasetSpec("train", "test", "small", augment=False),
    "cifar10": DatasetSpec("train", "test", "small"),
    "cifar100": DatasetSpec("train", "test", "small"),
    "oxford_flowers102": DatasetSpec("train+validation", "test", "imagenet"),
    "oxford_iiit_pet": DatasetSpec("train", "test", "imagenet"),
    "imagenet2012": DatasetSpec(
        "train",
        "validation",
        "imagenet",
        mean=(123.675, 116.28, 103.53),
        std=(58.395, 57.12, 57.375),
    ),
}


def names():
    """Returns the names `load` accepts, sorted, `"digits"` first (the offline default)."""
    return ["digits"] + sorted(name for name in DATASETS if name != "digits")
