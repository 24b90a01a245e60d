"""Layers and initializers that reproduce PyTorch's, for the authors' models.

- `kaiming_normal(mode)`: `torch.nn.init.kaiming_normal_` with its default
  gain `sqrt(2)` (nonlinearity `"leaky_relu"` with slope 0, or `"relu"`):
  an untruncated normal of standard deviation `sqrt(2 / fan)`.
- `torch_default_kernel()`: what `nn.Conv2d` and `nn.Linear` start from when
  nothing re-initializes them, `kaiming_uniform_(a=sqrt(5))`, i.e.
  `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`.
- `torch_default_bias(fan_in)`: their default bias, the same uniform.
- `conv(...)`: a convolution padded as PyTorch's `padding=k // 2` pads,
  symmetrically (Keras' `"same"` pads bottom/right only at stride 2).
- `OptionAShortcut`: the parameter-free shortcut of He et al. (2016, option A).

Keras fans equal PyTorch's: `fan_in = k * k * in_channels` and
`fan_out = k * k * out_channels` for a `k x k` convolution.
"""

import math

import keras

from bisam_keras.models.fused_batch_norm import FusedBatchNormalization
from bisam_keras.models.layers import conv_kwargs


def kaiming_normal(mode="fan_in"):
    """`torch.nn.init.kaiming_normal_(w, mode=mode)`: untruncated `N(0, 2 / fan)`."""
    return keras.initializers.VarianceScaling(2.0, mode, "untruncated_normal")


def torch_default_kernel():
    """PyTorch's default `Conv2d`/`Linear` weight: `U(-b, b)`, `b = 1 / sqrt(fan_in)`."""
    # kaiming_uniform_(a=sqrt(5)): gain^2 = 2 / (1 + 5) = 1/3, bound = sqrt(3 * (1/3) / fan_in).
    return keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias(fan_in):
    """PyTorch's default `Conv2d`/`Linear` bias: `U(-b, b)`, `b = 1 / sqrt(fan_in)`."""
    bound = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(-bound, bound)


def conv(x, filters, kernel, stride, name, weight_decay, initializer, use_bias=False):
    """`nn.Conv2d(in, filters, kernel, stride, padding=kernel // 2)` on channels-last `x`.

    At stride 1 Keras' `"same"` pads as PyTorch does; at stride 2 an explicit
    symmetric `ZeroPadding2D` (named `{name}_pad`) and a `"valid"` convolution.
    `initializer` is a callable returning a fresh initializer; a bias starts at zero.
    """
    kwargs = conv_kwargs(weight_decay, use_bias=use_bias)
    kwargs["kernel_initializer"] = initializer()
    padding = kernel // 2
    mode = "valid"
    if padding and stride == 1:
        mode = "same"
    elif padding:
        x = keras.layers.ZeroPadding2D(padding, name=f"{name}_pad")(x)
    return keras.layers.Conv2D(filters, kernel, stride, padding=mode, name=name, **kwargs)(x)


def batch_norm(sync_batchnorm, name):
    """`nn.BatchNorm2d` with its defaults: `eps=1e-5`, momentum 0.1 (Keras' 0.9).

    Its moving variance averages the Bessel-corrected batch variance, as
    PyTorch's running variance does (`FusedBatchNormalization`); with
    `sync_batchnorm`, Keras' synchronized layer, whose moving variance is biased.
    """
    if sync_batchnorm:
        return keras.layers.BatchNormalization(
            momentum=0.9, epsilon=1e-5, synchronized=True, name=name
        )
    return FusedBatchNormalization(
        momentum=0.9, epsilon=1e-5, unbiased_moving_variance=True, name=name
    )


def dense(x, units, name, kernel_initializer, bias_initializer, dtype=None):
    """`nn.Linear(x.shape[-1], units)` with the given initializers."""
    return keras.layers.Dense(
        units,
        kernel_initializer=kernel_initializer,
        bias_initializer=bias_initializer,
        dtype=dtype,
        name=name,
    )(x)


@keras.saving.register_keras_serializable(package="bisam_keras")
class OptionAShortcut(keras.layers.Layer):
    """He et al.'s option-A shortcut: subsample by 2, zero-pad the channels.

    `y = pad(x[:, ::2, ::2, :])` with `pad` zero channels before and after,
    the authors' `F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad))` in
    channels-last layout. It has no weights.

    Args:
        pad: the number of zero channels added on each side, `>= 0`.
        **kwargs: the arguments of `keras.layers.Layer`.

    Example:

    >>> y = OptionAShortcut(8)(keras.ops.ones((2, 32, 32, 16)))
    >>> tuple(y.shape)
    (2, 16, 16, 32)
    """

    def __init__(self, pad, **kwargs):
        super().__init__(**kwargs)
        if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
            raise ValueError(f"`pad` must be an int >= 0. Received: pad={pad!r}")
        self.pad = pad

    def call(self, inputs):
        subsampled = inputs[:, ::2, ::2, :]
        return keras.ops.pad(subsampled, [[0, 0], [0, 0], [0, 0], [self.pad, self.pad]])

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape

        def half(size):
            return None if size is None else (size + 1) // 2

        channels = None if channels is None else channels + 2 * self.pad
        return (batch, half(height), half(width), channels)

    def get_config(self):
        return {**super().get_config(), "pad": self.pad}
