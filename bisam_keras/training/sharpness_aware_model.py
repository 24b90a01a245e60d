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
        inner = self.inner_model
        if not inner.built:
            if type(inner).build is not keras.layers.Layer.build:
                inner.build(input_shape)  # Sequential, Functional, or its own build
            else:
                # A subclassed model without `build` builds by a (symbolic) call.
                inner(keras.tree.map_shape_structure(keras.KerasTensor, input_shape))
        self.built = True

    def export(
        self, filepath, format="tf_saved_model", verbose=None, input_signature=None, **kwargs
    ):
        """Exports the model for inference, like `keras.Model.export`.

        The serving signature is the inner model's inputs (their structure,
        shapes and dtypes) when the inner model has them (Functional and
        Sequential models); a subclassed inner model is exported from the
        shapes of the first call, as Keras does.
        """
        if input_signature is None:
            input_signature = self._inner_input_signature()
        return super().export(
            filepath,
            format=format,
            verbose=verbose,
            input_signature=input_signature,
            **kwargs,
        )

    def _inner_input_signature(self):
        """The inner model's inputs as Keras' `export` would read them, or `None`."""

        def spec(tensor):
            shape = (None,) + tuple(tensor.shape[1:])
            return keras.InputSpec(shape=shape, dtype=tensor.dtype, name=tensor.name)

        inner = self.inner_model
        try:
            if isinstance(inner, keras.Sequential):
                return [spec(t) for t in inner.inputs]  # positional, as Keras exports it
            return [keras.tree.map_structure(spec, inner.input)]
        except (AttributeError, ValueError):
            return None  # no symbolic inputs: the shapes of the first call serve

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
