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

The public names are loaded on first use (PEP 562), so that `import
bisam_keras.cli` and `bisam-keras --help` do not import TensorFlow.
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what the lazy names are, for type checkers and the API docs
    from bisam_keras import data, experiments, losses, models, optimizers
    from bisam_keras.optimizers import SAM, BiSAM, SharpnessAwareOptimizer
    from bisam_keras.training import SharpnessAwareMixin, SharpnessAwareModel

__version__ = "0.1.0"

__all__ = [
    "SAM",
    "BiSAM",
    "SharpnessAwareMixin",
    "SharpnessAwareModel",
    "SharpnessAwareOptimizer",
    "data",
    "experiments",
    "losses",
    "models",
    "optimizers",
]

# Public name -> the module that defines it (None: the name is a subpackage).
_LAZY = {
    "SAM": "bisam_keras.optimizers",
    "BiSAM": "bisam_keras.optimizers",
    "SharpnessAwareOptimizer": "bisam_keras.optimizers",
    "SharpnessAwareMixin": "bisam_keras.training",
    "SharpnessAwareModel": "bisam_keras.training",
    "data": None,
    "experiments": None,
    "losses": None,
    "models": None,
    "optimizers": None,
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
