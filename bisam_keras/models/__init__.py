"""Model zoo: the paper's CIFAR models, `keras.applications` and ViT-B/16.

`build(name, num_classes, input_shape)` returns a Functional `keras.Model`
that outputs float32 logits; `names()` lists every name.
`build(..., variant="authors")` builds the paper's models in the exact form
of the authors' PyTorch code (`bisam_keras.models.authors`).
"""

from bisam_keras.models.applications import application_names, keras_application
from bisam_keras.models.cifar_resnet import cifar_resnet
from bisam_keras.models.densenet import densenet
from bisam_keras.models.registry import VARIANTS, build, names, options, variants
from bisam_keras.models.vgg import vgg
from bisam_keras.models.vit import vit
from bisam_keras.models.wide_resnet import wide_resnet

__all__ = [
    "VARIANTS",
    "application_names",
    "build",
    "cifar_resnet",
    "densenet",
    "keras_application",
    "names",
    "options",
    "variants",
    "vgg",
    "vit",
    "wide_resnet",
]
