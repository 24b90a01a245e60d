"""SGD with PyTorch's momentum convention.

PyTorch's `torch.optim.SGD` keeps a buffer of gradients and multiplies it by
the current learning rate; Keras' `SGD` keeps a velocity that already holds
the past learning rates:

```
buf = momentum * buf + g;  w = w - lr_t * buf        # PyTorch (this class)
v   = momentum * v - lr_t * g;  w = w + v            # keras.optimizers.SGD
```

The two agree while the rate is constant and differ when it changes: after a
rate change PyTorch rescales the whole remembered direction at once, Keras
only the new gradient. The paper's code (PyTorch) used the first form, with
PyTorch's coupled weight decay (`g = g + weight_decay * w`, through momentum),
which is this class's `coupled_weight_decay`.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="bisam_keras")
class TorchSGD(keras.optimizers.Optimizer):
    """SGD with momentum in PyTorch's convention (`torch.optim.SGD`).

    ```
    g   = g + coupled_weight_decay * w         # PyTorch's SGD(weight_decay)
    buf = momentum * buf + g                   # buf starts at 0
    w   = w - learning_rate * buf              # nesterov=False
    w   = w - learning_rate * (g + momentum * buf)   # nesterov=True
    ```

    Exactly `torch.optim.SGD(lr, momentum, dampening=0, weight_decay, nesterov)`,
    with PyTorch's `weight_decay` named `coupled_weight_decay`: it is added to
    the gradients that `apply` receives and goes through momentum. (Keras'
    `clipnorm` / `global_clipnorm` then clip the decayed gradient, where a
    PyTorch loop clips before `step()` adds the decay.) It differs from
    `keras.optimizers.SGD` only when the learning rate changes between steps
    (see the module docstring). The `weight_decay` of `**kwargs` is Keras'
    decoupled decay (`w -= lr * weight_decay * w`), as for every Keras
    optimizer. Both skip the variables of `exclude_from_weight_decay()`.
    Wrapped by `bisam_keras.SAM` / `BiSAM`, the wrapper's own `weight_decay`
    adds the same `weight_decay * w` to the descent gradient.

    Args:
        learning_rate: a float or a
            `keras.optimizers.schedules.LearningRateSchedule`. Defaults to `0.01`.
        momentum: in `[0, 1]`. Defaults to `0.0`.
        nesterov: Nesterov momentum, PyTorch's form. Defaults to `False`.
        coupled_weight_decay: PyTorch's `weight_decay`, `>= 0`: `wd * w` is
            added to each gradient before momentum. Defaults to `0.0`.
        **kwargs: the other arguments of `keras.optimizers.Optimizer`
            (`weight_decay`, `clipnorm`, `global_clipnorm`, `name`, ...).

    Example:

    >>> opt = TorchSGD(0.1, momentum=0.9)
    >>> opt.get_config()["momentum"]
    0.9
    """

    def __init__(
        self,
        learning_rate=0.01,
        momentum=0.0,
        nesterov=False,
        coupled_weight_decay=0.0,
        name="torch_sgd",
        **kwargs,
    ):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if (
            isinstance(momentum, bool)
            or not isinstance(momentum, int | float)
            or not 0.0 <= momentum <= 1.0
        ):
            raise ValueError(
                f"`momentum` must be a number in [0, 1]. Received: momentum={momentum!r}"
            )
        if not isinstance(nesterov, bool):
            raise ValueError(f"`nesterov` must be a bool. Received: nesterov={nesterov!r}")
        if (
            isinstance(coupled_weight_decay, bool)
            or not isinstance(coupled_weight_decay, int | float)
            or not 0.0 <= coupled_weight_decay < float("inf")
        ):
            raise ValueError(
                "`coupled_weight_decay` must be a finite number >= 0. "
                f"Received: coupled_weight_decay={coupled_weight_decay!r}"
            )
        self.momentum = float(momentum)
        self.nesterov = nesterov
        self.coupled_weight_decay = float(coupled_weight_decay)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentum_buffers = []
        if self.momentum != 0:
            self.momentum_buffers = self.add_optimizer_variables(variables, "momentum_buffer")

    def apply(self, grads, trainable_variables=None):
        """Adds `coupled_weight_decay * w` to `grads`, then applies them.

        The decay is added here, to the gradients as `apply` receives them,
        exactly as the `weight_decay` of `bisam_keras.SAM` / `BiSAM` adds it
        before their inner optimizer: the same float32 operations in the same
        order, so both give the same bits.
        """
        if self.coupled_weight_decay:
            variables = (
                self._trainable_variables if trainable_variables is None else trainable_variables
            )
            grads = [self._decayed(g, v) for g, v in zip(grads, variables)]
        return super().apply(grads, trainable_variables)

    def _decayed(self, gradient, variable):
        if gradient is None or (hasattr(variable, "path") and not self._use_weight_decay(variable)):
            return gradient
        gradient = ops.convert_to_tensor(gradient)  # densifies IndexedSlices: w is dense
        value = ops.convert_to_tensor(variable)
        decay = ops.multiply(ops.cast(self.coupled_weight_decay, value.dtype), value)
        return ops.add(gradient, ops.cast(decay, gradient.dtype))

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        if self.momentum == 0:
            self.assign_sub(variable, ops.multiply(gradient, learning_rate))
            return
        buf = self.momentum_buffers[self._get_variable_index(variable)]
        momentum = ops.cast(self.momentum, variable.dtype)
        self.assign(buf, ops.add(ops.multiply(buf, momentum), gradient))
        direction = ops.add(gradient, ops.multiply(buf, momentum)) if self.nesterov else buf
        self.assign_sub(variable, ops.multiply(direction, learning_rate))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "momentum": self.momentum,
                "nesterov": self.nesterov,
                "coupled_weight_decay": self.coupled_weight_decay,
            }
        )
        return config
