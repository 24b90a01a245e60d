"""Builds any zoo model by name: `build("resnet56", 10)`, `build("ResNet50", 100)`.

The CIFAR models of the paper (`resnet20` ... `resnet110`, `wrn16_8`,
`wrn28_2`, `wrn28_10`, `vgg11_bn` ... `vgg19_bn`, `densenet121`), every
`keras.applications` model under its own name (`ResNet50`, `EfficientNetV2B0`,
...) and, with keras-hub installed, `vit_b16`. Every model outputs float32
logits from a final `Dense` layer (no softmax).

`variant="authors"` builds the paper's models in the exact form of the
authors' PyTorch code (`bisam_keras.models.authors`): the CIFAR ResNets, Wide
ResNets, VGG-BN, DenseNet-121 and `ResNet50`/`ResNet101`/`ResNet152`.
"""

import difflib
import inspect

from bisam_keras.models.applications import application_names, keras_application
from bisam_keras.models.authors import BUILDERS as AUTHORS_BUILDERS
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
VARIANTS = ("authors", "keras")
"""`"keras"`: the zoo's Keras-native models; `"authors"`: the authors' PyTorch forms."""


def _builders():
    builders = {name: builder for configs, builder in _FAMILIES for name in configs}
    builders.update({name: keras_application for name in application_names()})
    return builders


def names():
    """The names `build` accepts, sorted."""
    return sorted(_builders())


def variants(name):
    """The `variant`s `build(name, ...)` accepts, sorted: `["authors", "keras"]` or `["keras"]`."""
    _builder(name)
    return sorted(VARIANTS) if name in AUTHORS_BUILDERS else ["keras"]


def options(name, variant="keras"):
    """The keyword arguments `build(name, ..., variant=variant)` accepts beyond `input_shape`."""
    builder = _builder(name, variant)
    return sorted(set(inspect.signature(builder).parameters) - set(_COMMON_ARGUMENTS))


def _check_variant(variant):
    if not isinstance(variant, str) or variant not in VARIANTS:
        raise ValueError(
            f"`variant` must be one of {list(VARIANTS)}. Received: variant={variant!r}"
        )


def _builder(name, variant="keras"):
    _check_variant(variant)
    builders = _builders()
    if name in builders and variant == "keras":
        return builders[name]
    if name in builders:
        if name not in AUTHORS_BUILDERS:
            raise ValueError(
                "`variant='authors'` exists for the models of the authors' code only: "
                f"{sorted(AUTHORS_BUILDERS)}. Received: name={name!r}, variant={variant!r}"
            )
        return AUTHORS_BUILDERS[name]
    by_lower = {n.lower(): n for n in builders}
    close = difflib.get_close_matches(str(name).lower(), list(by_lower), n=5, cutoff=0.6)
    hint = f"Did you mean {[by_lower[c] for c in close]}? " if close else ""
    raise ValueError(
        f"Unknown model `name`. {hint}Known names: {sorted(builders)}. Received: name={name!r}"
    )


def build(name, num_classes, input_shape=(32, 32, 3), variant="keras", **kwargs):
    """Builds a zoo model that outputs float32 logits.

    Args:
        name: a model name from `names()`, e.g. `"resnet56"`, `"wrn28_10"`,
            `"vgg19_bn"`, `"densenet121"`, `"ResNet50"`, `"vit_b16"`.
        num_classes: the number of classes, `>= 2`.
        input_shape: the image shape `(height, width, channels)`.
            Defaults to `(32, 32, 3)`.
        variant: `"keras"` for the zoo's Keras-native model, `"authors"` for
            the exact form of the authors' PyTorch model of that name
            (option-A shortcuts, symmetric padding, PyTorch's initialization;
            see `variants(name)` and the Models guide). Defaults to `"keras"`.
        **kwargs: options of the model's family (see `options(name, variant)`):
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
    builder = _builder(name, variant)
    accepted = options(name, variant)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(
            f"`build({name!r}, ..., variant={variant!r})` accepts the options {accepted}. "
            f"Received unknown: {unknown}"
        )
    return builder(name, num_classes, input_shape, **kwargs)
