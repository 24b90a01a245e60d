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
"""

import bisam_keras._tf_setup as _tf_setup  # noqa: F401  first: fast TensorFlow CPU defaults
from bisam_keras import data, experiments, losses, models
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
]
