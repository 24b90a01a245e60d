"""Deterministic train/validation split and symmetric label noise (pure NumPy).

The split follows the paper's protocol: a fixed-seed 90/10 split of the
training set into train and validation. Label noise (Appendix A.3) replaces
exactly `round(fraction * n)` training labels, each by a *different* label
drawn uniformly from the other `num_classes - 1` classes:

```
chosen = rng.choice(n, round(fraction * n), replace=False)
offset[chosen] = rng.integers(1, num_classes)      # in 1 .. num_classes - 1
noisy = (labels + offset) % num_classes            # never equal to labels[i]
```
"""

import numbers

import numpy as np


def check_fraction(value, arg, upper_inclusive):
    """Raises `ValueError` naming `arg` unless `value` is in `[0, 1]` (or `[0, 1)`)."""
    upper_ok = value <= 1 if upper_inclusive else value < 1
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not (0 <= value and upper_ok)
    ):
        bound = "[0, 1]" if upper_inclusive else "[0, 1)"
        raise ValueError(f"`{arg}` must be a number in {bound}. Received: {arg}={value!r}")


def train_validation_split(num_examples, validation_fraction=0.1, seed=0):
    """Splits `range(num_examples)` into train and validation indices.

    Args:
        num_examples: the size of the training set, an int `>= 1`.
        validation_fraction: the fraction held out for validation, in `[0, 1)`;
            `round(validation_fraction * num_examples)` indices. Defaults to `0.1`.
        seed: the seed of the permutation; the same seed gives the same split.
            Defaults to `0`.

    Returns:
        `(train_indices, validation_indices)`: disjoint sorted int64 arrays whose
        union is `range(num_examples)`.

    Example:

    >>> train, val = train_validation_split(50_000, 0.1, seed=0)
    >>> len(train), len(val)
    (45000, 5000)
    """
    if isinstance(num_examples, bool) or not isinstance(num_examples, int | np.integer):
        raise ValueError(
            f"`num_examples` must be an int >= 1. Received: num_examples={num_examples!r}"
        )
    if num_examples < 1:
        raise ValueError(
            f"`num_examples` must be an int >= 1. Received: num_examples={num_examples!r}"
        )
    check_fraction(validation_fraction, "validation_fraction", upper_inclusive=False)
    num_validation = int(round(validation_fraction * num_examples))
    order = np.random.default_rng(seed).permutation(num_examples)
    return np.sort(order[num_validation:]), np.sort(order[:num_validation])


AUTHORS_SPLIT_SEED = 42
"""The seed of the paper's code's split (`np.random.seed(42)` in `utility/cifar.py`)."""

VALIDATION_SPLITS = ("seeded", "authors")
"""The `validation_split` methods of `bisam_keras.data.load`."""


def authors_validation_split(num_examples, validation_fraction=0.1):
    """The paper's code's split: the same for every run and seed.

    `utility/cifar.py` does, for the 50,000 CIFAR training images:

    ```
    indices = list(range(n)); split = int(np.floor(0.1 * n))
    np.random.seed(42); np.random.shuffle(indices)
    train, validation = indices[split:], indices[:split]
    ```

    This function draws the same permutation from a private
    `np.random.RandomState(42)` (NumPy's global state is left alone).

    Args:
        num_examples: the size of the training set, an int `>= 1`.
        validation_fraction: the fraction held out, in `[0, 1)`;
            `floor(validation_fraction * num_examples)` indices. Defaults to `0.1`.

    Returns:
        `(train_indices, validation_indices)`: disjoint sorted int64 arrays.

    Example:

    >>> train, val = authors_validation_split(50_000)
    >>> len(train), len(val)
    (45000, 5000)
    """
    if (
        isinstance(num_examples, bool)
        or not isinstance(num_examples, int | np.integer)
        or num_examples < 1
    ):
        raise ValueError(
            f"`num_examples` must be an int >= 1. Received: num_examples={num_examples!r}"
        )
    check_fraction(validation_fraction, "validation_fraction", upper_inclusive=False)
    split = int(np.floor(validation_fraction * num_examples))
    indices = list(range(num_examples))
    np.random.RandomState(AUTHORS_SPLIT_SEED).shuffle(indices)
    order = np.asarray(indices, np.int64)
    return np.sort(order[split:]), np.sort(order[:split])


def label_noise_offsets(num_examples, fraction, num_classes, seed=0):
    """The additive label offsets of `corrupt_labels` (0 where a label is kept).

    Independent of the labels themselves, so a streaming pipeline can apply
    them as `(label + offset[i]) % num_classes`.

    Returns:
        An int64 array of `num_examples` offsets in `[0, num_classes)`, exactly
        `round(fraction * num_examples)` of them nonzero.
    """
    check_fraction(fraction, "fraction", upper_inclusive=True)
    if (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, int | np.integer)
        or num_classes < 2
    ):
        raise ValueError(
            f"`num_classes` must be an int >= 2. Received: num_classes={num_classes!r}"
        )
    rng = np.random.default_rng(seed)
    num_noisy = int(round(fraction * num_examples))
    offsets = np.zeros(num_examples, dtype=np.int64)
    chosen = rng.choice(num_examples, size=num_noisy, replace=False)
    offsets[chosen] = rng.integers(1, num_classes, size=num_noisy)
    return offsets


def corrupt_labels(labels, fraction, num_classes, seed=0):
    """Replaces exactly `round(fraction * len(labels))` labels by different ones.

    Each corrupted label is drawn uniformly from the `num_classes - 1` other
    classes; the same `seed` corrupts the same examples the same way.

    Args:
        labels: int array of shape `(n,)`, values in `[0, num_classes)`.
        fraction: the fraction of labels to corrupt, in `[0, 1]`.
        num_classes: the number of classes, `>= 2`.
        seed: the seed of the choice of examples and new labels. Defaults to `0`.

    Returns:
        `(noisy_labels, corrupted)`: the new int64 labels and a boolean mask of
        the changed examples.

    Example:

    >>> noisy, corrupted = corrupt_labels(np.zeros(10, int), 0.3, 10, seed=0)
    >>> int(corrupted.sum())
    3
    """
    labels = np.asarray(labels, dtype=np.int64)
    if labels.ndim != 1:
        raise ValueError(f"`labels` must be 1-D. Received: labels.shape={labels.shape}")
    offsets = label_noise_offsets(len(labels), fraction, num_classes, seed)
    return (labels + offsets) % num_classes, offsets != 0
