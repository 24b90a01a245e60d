"""bisam-keras: BiSAM and the SAM family for Keras 3 on TensorFlow.

```python
import keras
import bisam_keras as bk

model = bk.SharpnessAwareModel(inner_model)
model.compile(
    optimizer=bk.BiSAM(keras.optimizers.SGD(0.1, momentum=0.9), rho=0.05),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["accuracy"],
)
model.fit(train_ds, epochs=200)
```

`import bisam_keras` loads everything, so that `keras.models.load_model`
finds the package's serializable classes. Only in the `bisam-keras` command
are the public names loaded on first use (PEP 562): it parses its arguments
before TensorFlow is imported, and `bisam-keras --help` answers at once.
"""

import importlib
import os
import sys
from typing import TYPE_CHECKING

import bisam_keras._tf_setup as _tf_setup  # noqa: F401  first: fast TensorFlow CPU defaults

if TYPE_CHECKING:  # what the lazy names are, for type checkers and the API docs
    from bisam_keras import callbacks, data, experiments, losses, models, optimizers, sharpness
    from bisam_keras.optimizers import SAM, BiSAM, SharpnessAwareOptimizer
    from bisam_keras.training import SharpnessAwareMixin, SharpnessAwareModel

__version__ = "0.1.0"

__all__ = [
    "SAM",
    "BiSAM",
    "SharpnessAwareMixin",
    "SharpnessAwareModel",
    "SharpnessAwareOptimizer",
    "callbacks",
    "data",
    "experiments",
    "losses",
    "models",
    "optimizers",
    "sharpness",
]

# Public name -> the module that defines it (None: the name is a subpackage).
_LAZY = {
    "SAM": "bisam_keras.optimizers",
    "BiSAM": "bisam_keras.optimizers",
    "SharpnessAwareOptimizer": "bisam_keras.optimizers",
    "SharpnessAwareMixin": "bisam_keras.training",
    "SharpnessAwareModel": "bisam_keras.training",
    "callbacks": None,
    "data": None,
    "experiments": None,
    "losses": None,
    "models": None,
    "optimizers": None,
    "sharpness": None,
}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'bisam_keras' has no attribute {name!r}")
    module = _LAZY[name]
    if module is None:
        value = importlib.import_module(f"bisam_keras.{name}")
    else:
        value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


def _started_as_the_command():
    """Whether this process is the `bisam-keras` console script."""
    main = getattr(sys.modules.get("__main__"), "__file__", None) or ""
    name = os.path.basename(main).lower()
    return name in ("bisam-keras", "bisam-keras.exe", "bisam-keras-script.py")


if not _started_as_the_command():
    for _name in __all__:
        __getattr__(_name)
    del _name
