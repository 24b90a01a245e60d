"""The paper's models in the exact form of the authors' PyTorch code.

`bisam_keras.models.build(name, num_classes, variant="authors")` builds them;
`BUILDERS` maps each name that has such a form to its builder. The source is
LIONS-EPFL/BiSAM (MIT license), `model/*.py`; each module says what differs
from the zoo's Keras-native model of the same name.
"""

from bisam_keras.models.authors.cifar_resnet import authors_cifar_resnet
from bisam_keras.models.authors.densenet import authors_densenet
from bisam_keras.models.authors.imagenet_resnet import CONFIGS as IMAGENET_RESNET_CONFIGS
from bisam_keras.models.authors.imagenet_resnet import authors_imagenet_resnet
from bisam_keras.models.authors.layers import OptionAShortcut
from bisam_keras.models.authors.vgg import authors_vgg
from bisam_keras.models.authors.wide_resnet import authors_wide_resnet
from bisam_keras.models.cifar_resnet import DEPTHS
from bisam_keras.models.densenet import CONFIGS as DENSENET_CONFIGS
from bisam_keras.models.vgg import CONFIGS as VGG_CONFIGS
from bisam_keras.models.wide_resnet import CONFIGS as WIDE_RESNET_CONFIGS

BUILDERS = {
    **{name: authors_cifar_resnet for name in DEPTHS},
    **{name: authors_wide_resnet for name in WIDE_RESNET_CONFIGS},
    **{name: authors_vgg for name in VGG_CONFIGS},
    **{name: authors_densenet for name in DENSENET_CONFIGS},
    **{name: authors_imagenet_resnet for name in IMAGENET_RESNET_CONFIGS},
}

__all__ = [
    "BUILDERS",
    "OptionAShortcut",
    "authors_cifar_resnet",
    "authors_densenet",
    "authors_imagenet_resnet",
    "authors_vgg",
    "authors_wide_resnet",
]
