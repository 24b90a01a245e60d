"""ViT-B/16 (Dosovitskiy et al., 2021) from keras-hub, for fine-tuning.

The paper fine-tunes an ImageNet-pretrained ViT-B/16 (Section 4.2): patch size
16, hidden size 768, 12 layers of 12-head attention, MLP size 3072, at 224x224.
The class token of `keras_hub.models.ViTBackbone` feeds a float32 dense
classifier. Images of another size are resized to 224x224 inside the model.

keras-hub is an optional dependency: `pip install "bisam-keras[hub]"`.

Reference: A. Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers
for Image Recognition at Scale", ICLR 2021, https://arxiv.org/abs/2010.11929
"""

import keras

from bisam_keras.models.layers import check_input_shape, check_num_classes, check_rate, logits

# name: (keras-hub preset, ViTBackbone arguments)
CONFIGS = {
    "vit_b16": (
        "vit_base_patch16_224_imagenet",
        dict(
            image_shape=(224, 224, 3),
            patch_size=16,
            num_layers=12,
            num_heads=12,
            hidden_dim=768,
            mlp_dim=3072,
        ),
    ),
}


def _import_keras_hub():
    try:
        import keras_hub
    except ImportError as error:
        raise ImportError(
            'The ViT models need keras-hub: pip install "bisam-keras[hub]" '
            '(or pip install "keras-hub>=0.19").'
        ) from error
    return keras_hub


def _pretrained_backbone(keras_hub, preset):
    """Loads a preset, turning a failed download into a clear error."""
    try:
        return keras_hub.models.ViTBackbone.from_preset(preset)
    except (ImportError, TypeError):
        raise
    except Exception as error:
        raise RuntimeError(
            f"Could not fetch the keras-hub preset {preset!r} ({error}). Without network "
            "access, download it on another machine "
            f"(`keras_hub.models.ViTBackbone.from_preset({preset!r})` caches it under "
            "~/.cache/kagglehub/) and copy that cache here, or pass `preset=` the local "
            "directory of the preset."
        ) from error


def vit(
    name="vit_b16",
    num_classes=10,
    input_shape=(224, 224, 3),
    pretrained=False,
    preset=None,
    dropout=0.0,
):
    """Builds a ViT image classifier that outputs logits.

    Args:
        name: `"vit_b16"`. Defaults to `"vit_b16"`.
        num_classes: the number of classes, `>= 2`. Defaults to `10`.
        input_shape: the image shape, resized to 224x224 inside the model when
            it differs. Defaults to `(224, 224, 3)`.
        pretrained: whether the backbone starts from the ImageNet preset
            `"vit_base_patch16_224_imagenet"` (downloaded by keras-hub).
            Defaults to `False`.
        preset: a keras-hub preset name or local preset directory to load
            instead (implies pretrained weights). Defaults to `None`.
        dropout: dropout rate inside the transformer layers (random init
            only; a preset keeps its own). Defaults to `0.0`.

    Returns:
        A Functional `keras.Model` whose backbone is a nested model.
    """
    if name not in CONFIGS:
        raise ValueError(f"`name` must be one of {sorted(CONFIGS)}. Received: name={name!r}")
    check_num_classes(num_classes)
    input_shape = check_input_shape(input_shape)
    check_rate(dropout, "dropout")
    keras_hub = _import_keras_hub()
    default_preset, hyper_parameters = CONFIGS[name]
    height, width, _ = hyper_parameters["image_shape"]
    if input_shape[2] != 3:
        raise ValueError(
            f"`input_shape` must have 3 channels for {name}. Received: input_shape={input_shape}"
        )
    if pretrained or preset is not None:
        backbone = _pretrained_backbone(keras_hub, preset or default_preset)
    else:
        backbone = keras_hub.models.ViTBackbone(dropout_rate=dropout, **hyper_parameters)
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    if input_shape[:2] != (height, width):
        x = keras.layers.Resizing(height, width, name="resize")(x)
    tokens = backbone(x)
    return keras.Model(inputs, logits(tokens[:, 0], num_classes), name=name)
