"""Builds any zoo model by name: `build("resnet56", 10)`, `build("ResNet50", 100)`.

The CIFAR models of the paper (`resnet20` ... `resnet110`, `wrn16_8`,
`wrn28_2`, `wrn28_10`, `vgg11_bn` ... `vgg19_bn`, `densenet121`), every
`keras.applications` model under its own name (`ResNet50`, `EfficientNetV2B0`,
...) and, with keras-hub installed, `vit_b16`. Every model outputs float32
logits from a final `Dense` layer (no softmax).
"""

import difflib
import inspect

from bisam_keras.models.applications import application_names, keras_application
from bisam_keras.models.cifar_resnet import DEPTHS, cifar_resnet
from bisam_keras.models.densenet import CONFIGS as DENSENET_CONFIGS
from bisam_keras.models.densenet import densenet
from bisam_keras.models.vgg import CONFIGS as VGG_CONFIGS
from bisam_keras.models.vgg import vgg
from bisam_keras.models.vit import CONFIGS as VIT_CONFIGS
from bisam_keras.models.vit import vit
from bisam_keras.models.wide_resnet import CONFIGS as WIDE_RESNET_CONFIGS
from bisam_keras.models.wide_resnet import wide_resnet

_FAMILIES = (
    (DEPTHS, cifar_resnet),
    (WIDE_RESNET_CONFIGS, wide_resnet),
    (VGG_CONFIGS, vgg),
    (DENSENET_CONFIGS, densenet),
    (VIT_CONFIGS, vit),
)
_COMMON_ARGUMENTS = ("name", "num_classes", "input_shape")


def _builders():
    builders = {name: builder for configs, builder in _FAMILIES for name in configs}
    builders.update({name: keras_application for name in application_names()})
    return builders


def names():
    """The names `build` accepts, sorted."""
    return sorted(_builders())


def options(name):
    """The keyword arguments `build(name, ...)` accepts beyond `input_shape`, sorted."""
    builder = _builder(name)
    return sorted(set(inspect.signature(builder).parameters) - set(_COMMON_ARGUMENTS))


def _builder(name):
    builders = _builders()
    if name in builders:
        return builders[name]
    by_lower = {n.lower(): n for n in builders}
    close = difflib.get_close_matches(str(name).lower(), list(by_lower), n=5, cutoff=0.6)
    hint = f"Did you mean {[by_lower[c] for c in close]}? " if close else ""
    raise ValueError(
        f"Unknown model `name`. {hint}Known names: {sorted(builders)}. Received: name={name!r}"
    )


def build(name, num_classes, input_shape=(32, 32, 3), **kwargs):
    """Builds a zoo model that outputs float32 logits.

    Args:
        name: a model name from `names()`, e.g. `"resnet56"`, `"wrn28_10"`,
            `"vgg19_bn"`, `"densenet121"`, `"ResNet50"`, `"vit_b16"`.
        num_classes: the number of classes, `>= 2`.
        input_shape: the image shape `(height, width, channels)`.
            Defaults to `(32, 32, 3)`.
        **kwargs: options of the model's family (see `options(name)`):
            `weight_decay` and `sync_batchnorm` for the CIFAR models, `dropout`
            for the Wide ResNets and ViT, `pretrained`, `weights_path` and
            `resize_to` for `keras.applications` models, `pretrained` and
            `preset` for ViT.

    Returns:
        A Functional `keras.Model` mapping images to `(batch, num_classes)` logits.

    Example:

    >>> model = build("resnet20", 10)
    >>> model.output.shape
    (None, 10)
    """
    builder = _builder(name)
    unknown = sorted(set(kwargs) - set(options(name)))
    if unknown:
        raise ValueError(
            f"`build({name!r}, ...)` accepts the options {options(name)}. "
            f"Received unknown: {unknown}"
        )
    return builder(name, num_classes, input_shape, **kwargs)
