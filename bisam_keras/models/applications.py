"""Every `keras.applications` model, by its own name, with a logits head.

Each model is the application's convolutional base (`include_top=False`,
`pooling="avg"`) followed by a float32 `Dense(num_classes)`: the same
architecture whether the base starts from random or from ImageNet weights, so a
saved `include_top=False` weights file fits either. (The ImageNet tops differ
per family, e.g. VGG's two 4096-unit layers; they are not built.)

Input sizes: each application has a minimum image size (71x71 for Xception,
75x75 for InceptionV3 and InceptionResNetV2, 32x32 for the others). Smaller
images, such as CIFAR's 32x32 for the Inception family, raise a `ValueError`
unless `resize_to` is given, which upsamples inside the model with a
`keras.layers.Resizing` layer. Images are fed as they come: apply the
application's own `preprocess_input` (or a `Rescaling` layer) in the data
pipeline when starting from ImageNet weights.
"""

import contextlib
import inspect
import os
import socket

import keras

from bisam_keras.models.layers import check_input_shape, check_num_classes, logits

MIN_IMAGE_SIZE = {"InceptionResNetV2": 75, "InceptionV3": 75, "Xception": 71}
DEFAULT_MIN_IMAGE_SIZE = 32
DOWNLOAD_TIMEOUT_S = 30


def application_names():
    """The names of the model functions in `keras.applications`, sorted."""
    return sorted(
        name
        for name, value in vars(keras.applications).items()
        if name[:1].isupper() and callable(value) and not inspect.ismodule(value)
    )


@contextlib.contextmanager
def _socket_timeout(seconds):
    """Bounds each blocking socket operation (a download with no network fails fast)."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds if previous is None else previous)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _image_size(name, input_shape, resize_to):
    """The (height, width) the base sees, checked against the application's minimum."""
    minimum = MIN_IMAGE_SIZE.get(name, DEFAULT_MIN_IMAGE_SIZE)
    if resize_to is not None:
        size = (resize_to, resize_to) if isinstance(resize_to, int) else tuple(resize_to)
        if len(size) != 2 or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= minimum for d in size
        ):
            raise ValueError(
                f"`resize_to` must be an int or a (height, width) pair of ints >= {minimum} "
                f"for {name}. Received: resize_to={resize_to!r}"
            )
        return size
    if min(input_shape[:2]) < minimum:
        raise ValueError(
            f"`input_shape` is too small for {name}, which needs images of at least "
            f"{minimum}x{minimum}; pass `resize_to={minimum}` (or larger) to upsample "
            f"inside the model. Received: input_shape={input_shape}"
        )
    return input_shape[:2]


def _load_base(name, weights, image_shape):
    """Builds the application's base, turning a failed weight download into a clear error."""
    application = getattr(keras.applications, name)
    if weights != "imagenet":
        return application(
            include_top=False, weights=weights, input_shape=image_shape, pooling="avg"
        )
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            return application(
                include_top=False, weights=weights, input_shape=image_shape, pooling="avg"
            )
    except (ValueError, TypeError):
        raise
    except Exception as error:
        raise RuntimeError(
            f"Could not fetch the ImageNet weights of {name} ({error}). Without network "
            "access, download its `include_top=False` weights file on another machine "
            f"(`keras.applications.{name}(include_top=False, weights='imagenet')` caches "
            "it in ~/.keras/models/) and pass `weights_path=` that file, or copy it into "
            "~/.keras/models/ here."
        ) from error


def keras_application(
    name,
    num_classes=10,
    input_shape=(32, 32, 3),
    pretrained=False,
    weights_path=None,
    resize_to=None,
):
    """Builds a `keras.applications` model with a float32 logits head.

    Args:
        name: the application's name, e.g. `"ResNet50"` or `"EfficientNetV2B0"`
            (see `application_names()`).
        num_classes: the number of classes, `>= 2`. Defaults to `10`.
        input_shape: the image shape. Defaults to `(32, 32, 3)`.
        pretrained: whether the base starts from ImageNet weights (downloaded
            by Keras; a `RuntimeError` explains what to do when that fails).
            Defaults to `False`.
        weights_path: a local `include_top=False` weights file for the base,
            used instead of the download. Defaults to `None`.
        resize_to: an int or a `(height, width)` pair: the images are resized
            to it inside the model before the base. Defaults to `None`
            (no resizing; too small an `input_shape` raises a `ValueError`).

    Returns:
        A Functional `keras.Model` whose base is a nested model.
    """
    if name not in application_names():
        raise ValueError(f"`name` must be one of {application_names()}. Received: name={name!r}")
    check_num_classes(num_classes)
    input_shape = check_input_shape(input_shape)
    height, width = _image_size(name, input_shape, resize_to)
    weights = "imagenet" if pretrained else None
    if weights_path is not None:
        if not os.path.isfile(weights_path):
            raise ValueError(
                f"`weights_path` must be an existing weights file. "
                f"Received: weights_path={weights_path!r}"
            )
        weights = os.fspath(weights_path)
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    if (height, width) != input_shape[:2]:
        x = keras.layers.Resizing(height, width, name="resize")(x)
    base = _load_base(name, weights, (height, width, input_shape[2]))
    x = base(x)
    return keras.Model(inputs, logits(x, num_classes), name=name)
