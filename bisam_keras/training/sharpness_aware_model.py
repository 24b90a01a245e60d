"""`SharpnessAwareModel`: wrap any classifier to train it with SAM or BiSAM."""

import keras

from bisam_keras.training.sharpness_aware_mixin import SharpnessAwareMixin


@keras.saving.register_keras_serializable(package="bisam_keras")
class SharpnessAwareModel(SharpnessAwareMixin, keras.Model):
    """Wraps a `keras.Model` so that `fit` runs the sharpness-aware step.

    The wrapper calls `inner_model` and adds nothing else: weights, layers and
    outputs are the inner model's, and `inner_model` can be saved or used on
    its own after training. Compile it with `bisam_keras.BiSAM` or
    `bisam_keras.SAM`; see `bisam_keras.SharpnessAwareMixin` for the step.

    Args:
        inner_model: any `keras.Model` (Sequential, Functional or subclassed)
            that maps inputs to predictions (logits for classifiers).
        **kwargs: passed to `keras.Model` (for example `name`).

    Example:

    ```python
    model = bk.SharpnessAwareModel(inner_model)
    model.compile(
        optimizer=bk.BiSAM(keras.optimizers.SGD(0.1, momentum=0.9), rho=0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(train_ds, validation_data=val_ds, epochs=200)
    ```
    """

    def __init__(self, inner_model, **kwargs):
        if not isinstance(inner_model, keras.Model):
            raise ValueError(
                f"`inner_model` must be a keras.Model. Received: inner_model={inner_model!r}"
            )
        super().__init__(**kwargs)
        self.inner_model = inner_model
        if inner_model.built:
            self.built = True

    def call(self, inputs, training=None):
        return self.inner_model(inputs, training=training)

    def build(self, input_shape):
        if not self.inner_model.built:
            self.inner_model.build(input_shape)
        self.built = True

    def get_config(self):
        config = super().get_config()
        config["inner_model"] = keras.saving.serialize_keras_object(self.inner_model)
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        inner_model = keras.saving.deserialize_keras_object(
            config.pop("inner_model"), custom_objects=custom_objects
        )
        return cls(inner_model, **config)
