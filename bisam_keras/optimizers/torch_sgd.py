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
only the new gradient. The paper's code (PyTorch) used the first form.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="bisam_keras")
class TorchSGD(keras.optimizers.Optimizer):
    """SGD with momentum in PyTorch's convention (`torch.optim.SGD`).

    ```
    buf = momentum * buf + g                   # buf starts at 0
    w   = w - learning_rate * buf              # nesterov=False
    w   = w - learning_rate * (g + momentum * buf)   # nesterov=True
    ```

    Exactly `torch.optim.SGD(lr, momentum, dampening=0, nesterov)`. It differs
    from `keras.optimizers.SGD` only when the learning rate changes between
    steps (see the module docstring). `weight_decay` is Keras' decoupled decay
    (`w -= lr * weight_decay * w`), as for every Keras optimizer; PyTorch's
    coupled decay at `w` is the `weight_decay` of `bisam_keras.SAM` / `BiSAM`
    (with `rho=0` for plain SGD).

    Args:
        learning_rate: a float or a
            `keras.optimizers.schedules.LearningRateSchedule`. Defaults to `0.01`.
        momentum: in `[0, 1]`. Defaults to `0.0`.
        nesterov: Nesterov momentum, PyTorch's form. Defaults to `False`.
        **kwargs: the other arguments of `keras.optimizers.Optimizer`
            (`weight_decay`, `clipnorm`, `global_clipnorm`, `name`, ...).

    Example:

    >>> opt = TorchSGD(0.1, momentum=0.9)
    >>> opt.get_config()["momentum"]
    0.9
    """

    def __init__(
        self, learning_rate=0.01, momentum=0.0, nesterov=False, name="torch_sgd", **kwargs
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
        self.momentum = float(momentum)
        self.nesterov = nesterov

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentum_buffers = []
        if self.momentum != 0:
            self.momentum_buffers = self.add_optimizer_variables(variables, "momentum_buffer")

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
        config.update({"momentum": self.momentum, "nesterov": self.nesterov})
        return config
