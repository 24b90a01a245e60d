"""The examples a measure runs on: a fixed, seeded subset, in fixed batches.

Two models measured with the same data, `num_examples` and `seed` see the same
examples in the same batches. The data are read once, into memory: pass a
dataset without shuffling or augmentation (for a large one, `dataset.take(n)`).
"""

import dataclasses

import numpy as np
import tensorflow as tf

from bisam_keras.sharpness import checks


@dataclasses.dataclass(frozen=True)
class Examples:
    """The measured examples, `x` and `y` as NumPy arrays (first axis: examples)."""

    x: np.ndarray
    y: np.ndarray

    @property
    def num_examples(self):
        return int(self.x.shape[0])

    def batches(self, batch_size):
        """Consecutive `(x, y)` batches of `batch_size` examples (the last may be smaller)."""
        batch_size = checks.positive_int("batch_size", batch_size)
        return [
            (self.x[start : start + batch_size], self.y[start : start + batch_size])
            for start in range(0, self.num_examples, batch_size)
        ]


def _as_arrays(data):
    """`(x, y)` arrays from a `tf.data.Dataset` of `(x, y)` batches or a pair of arrays."""
    if isinstance(data, Examples):
        return data.x, data.y
    if isinstance(data, tf.data.Dataset):
        xs, ys = [], []
        for element in data.as_numpy_iterator():
            if not (isinstance(element, tuple) and len(element) == 2):
                raise ValueError(
                    "`data` must yield `(x, y)` batches. Received an element of "
                    f"type {type(element).__name__}: data={data!r}"
                )
            xs.append(np.asarray(element[0]))
            ys.append(np.asarray(element[1]))
        if not xs:
            raise ValueError(f"`data` holds no examples. Received: data={data!r}")
        return np.concatenate(xs), np.concatenate(ys)
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return np.asarray(data[0]), np.asarray(data[1])
    raise ValueError(
        "`data` must be a tf.data.Dataset of `(x, y)` batches or a pair `(x, y)` "
        f"of arrays. Received: data={data!r}"
    )


def select(data, num_examples=None, seed=0):
    """The examples to measure: all of `data`, or `num_examples` of them chosen by `seed`.

    Args:
        data: a `tf.data.Dataset` of `(x, y)` batches, a pair `(x, y)` of
            arrays, or `Examples`.
        num_examples: how many examples to keep, drawn without replacement
            by `seed` and kept in their original order; `None` keeps all.
            Defaults to `None`.
        seed: the seed of the draw. Defaults to `0`.

    Returns:
        `Examples`.
    """
    num_examples = checks.optional_positive_int("num_examples", num_examples)
    seed = checks.non_negative_int("seed", seed)
    x, y = _as_arrays(data)
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(
            "`data` must hold as many labels as inputs, at least one. Received: "
            f"x.shape={x.shape}, y.shape={y.shape}"
        )
    if num_examples is not None:
        if num_examples > x.shape[0]:
            raise ValueError(
                f"`num_examples` must be at most the {x.shape[0]} examples of `data`. "
                f"Received: num_examples={num_examples}"
            )
        keep = np.sort(np.random.default_rng(seed).permutation(x.shape[0])[:num_examples])
        x, y = x[keep], y[keep]
    return Examples(x, y)
