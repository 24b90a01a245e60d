"""Model zoo: the paper's CIFAR models."""

from bisam_keras.models.cifar_resnet import cifar_resnet

__all__ = ["cifar_resnet"]
