"""The base class of the sharpness-aware optimizer wrappers (`SAM`, `BiSAM`)."""

import contextlib
import math
import numbers
import random

import keras
import tensorflow as tf

from bisam_keras import perturbation as perturbation_lib


def _check_number(name, value, low, high=None, low_open=False, high_open=False):
    """Raise a ValueError naming `name` unless `value` lies in the interval."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    ok = ok and math.isfinite(value)
    if ok:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        left = "(" if low_open else "["
        right = ")" if high_open or high is None else "]"
        upper = "inf" if high is None else high
        raise ValueError(
            f"`{name}` must be a finite number in {left}{low}, {upper}{right}. "
            f"Received: {name}={value!r}"
        )
    return float(value)


class SharpnessAwareOptimizer(keras.optimizers.Optimizer):
    """Wraps an optimizer with the configuration of a sharpness-aware step.

    The wrapper applies the descent gradients with `inner_optimizer`, like
    `keras.optimizers.LossScaleOptimizer`; the two-pass step itself is run by
    `bisam_keras.SharpnessAwareModel` (or `SharpnessAwareMixin`), which asks
    the wrapper for the ascent objective and the perturbation.

    Subclasses (`SAM`, `BiSAM`) decide the ascent objective.

    A model without that step (a plain `keras.Sequential`, Functional or
    subclassed model) compiled with a wrapper raises `ValueError` at its
    first training step, whatever `rho`: Keras' own `train_step` would pass
    the gradients at `w` to `apply` and train with the inner optimizer alone.
    `weight_decay` is coupled decay at the unperturbed weights: the wrapper
    adds `weight_decay * w` to the descent gradient `g(w + e)` before the
    inner optimizer applies it, so the decay runs through momentum, as
    PyTorch's `SGD(weight_decay=...)` does after SAM restores `w`. (An L2
    regularizer in the loss instead adds `weight_decay * (w + e)`.) It applies
    to every trainable variable, as PyTorch's default does, except those
    excluded with `exclude_from_weight_decay()`.
    """

    def __init__(
        self,
        inner_optimizer,
        rho=0.05,
        adaptive=False,
        eta=0.0,
        swp_probability=1.0,
        sds_fraction=1.0,
        micro_batch_size=None,
        sync_perturbation=False,
        seed=None,
        weight_decay=0.0,
        name=None,
        **kwargs,
    ):
        if isinstance(inner_optimizer, SharpnessAwareOptimizer) or not isinstance(
            inner_optimizer, keras.optimizers.Optimizer
        ):
            raise ValueError(
                "`inner_optimizer` must be a `keras.optimizers.Optimizer` that is "
                f"not itself sharpness-aware. Received: inner_optimizer={inner_optimizer!r}"
            )
        if kwargs:
            raise ValueError(
                f"{type(self).__name__} does not support arguments "
                f"{sorted(kwargs)}: set them on the `inner_optimizer`. "
                f"Received: {kwargs}"
            )
        rho = _check_number("rho", rho, 0.0)
        if not isinstance(adaptive, bool):
            raise ValueError(f"`adaptive` must be a bool. Received: adaptive={adaptive!r}")
        eta = _check_number("eta", eta, 0.0)
        weight_decay = _check_number("weight_decay", weight_decay, 0.0)
        swp_probability = _check_number("swp_probability", swp_probability, 0.0, 1.0, low_open=True)
        sds_fraction = _check_number("sds_fraction", sds_fraction, 0.0, 1.0, low_open=True)
        if micro_batch_size is not None and (
            not isinstance(micro_batch_size, numbers.Integral)
            or isinstance(micro_batch_size, bool)
            or micro_batch_size < 1
        ):
            raise ValueError(
                "`micro_batch_size` must be None or an int >= 1. "
                f"Received: micro_batch_size={micro_batch_size!r}"
            )
        if not isinstance(sync_perturbation, bool):
            raise ValueError(
                "`sync_perturbation` must be a bool. "
                f"Received: sync_perturbation={sync_perturbation!r}"
            )
        if seed is None:
            seed = random.randint(0, 2**31 - 1)
        if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
            raise ValueError(f"`seed` must be an int or None. Received: seed={seed!r}")
        super().__init__(learning_rate=0.0, name=name)
        self.inner_optimizer = inner_optimizer
        self.rho = rho
        self.adaptive = adaptive
        self.eta = eta
        self.swp_probability = swp_probability
        self.sds_fraction = sds_fraction
        self.micro_batch_size = None if micro_batch_size is None else int(micro_batch_size)
        self.sync_perturbation = sync_perturbation
        self.seed = int(seed)
        self._descent_steps = 0
        # Coupled decay, applied in `apply` (not Keras' decoupled decay, which
        # the base class would apply to the variables themselves).
        self.weight_decay = weight_decay

    # ----------------------------------------------------------------- maths
    def perturbation(self, gradients, variables, step_seed=None):
        """The perturbation `e` for the ascent `gradients` of `variables`.

        Args:
            gradients: the (unscaled) ascent gradients, one per variable.
            variables: the trainable variables (or their values).
            step_seed: an int32 `(2,)` seed for the stochastic weight
                perturbation; by default derived from `seed` and `iterations`.

        Returns:
            A list of float32 tensors, one per variable.
        """
        values = [tf.convert_to_tensor(v) for v in variables]
        eps = perturbation_lib.perturbation(
            gradients, values, self.rho, adaptive=self.adaptive, eta=self.eta
        )
        if self.swp_probability < 1.0:
            if step_seed is None:
                step_seed = self.step_seed()
            eps = perturbation_lib.stochastic_weight_mask(eps, self.swp_probability, step_seed)
        return eps

    def step_seed(self):
        """A stateless seed that changes every step and survives save/load."""
        iterations = tf.cast(self.iterations, tf.int32)
        return tf.stack([tf.constant(self.seed % (2**31), tf.int32), iterations])

    def output_objective(self, loss, output=None):
        """The ascent objective of one model output compiled with `loss`.

        `SharpnessAwareMixin.compile` asks for it once per output: a
        `keras.losses.Loss` to climb for that output (weighted as the compiled
        `loss_weights`), or `None` to use `ascent_loss` instead. Defaults to
        `None`.
        """
        return None

    def ascent_loss(self, y_true, y_pred, sample_weight=None):
        """The ascent objective, or `None` to use the model's compiled loss."""
        return None

    def ascent_losses_per_example(self, y_true, y_pred):
        """Per-example ascent objective (for data selection), or `None`."""
        return None

    # ------------------------------------------------- optimizer plumbing
    def build(self, var_list):
        self.inner_optimizer.build(var_list)
        super().build(var_list)

    @property
    def variables(self):
        return self._variables + self.inner_optimizer.variables

    @contextlib.contextmanager
    def descent_step(self):
        """Marks the `apply` calls of a sharpness-aware step as legitimate.

        `SharpnessAwareMixin.train_step` applies its descent gradients inside
        this context. Outside it, `apply` raises: a plain `keras.Model` would
        hand the wrapper the gradients at `w`, and train with the inner
        optimizer alone. A counter rather than a flag, and on the instance
        rather than per thread: under `tf.distribute` each replica's step is
        traced in its own thread, and the update itself may run in another.
        """
        self._descent_steps += 1
        try:
            yield
        finally:
            self._descent_steps -= 1

    def _check_descent_step(self):
        if not self._descent_steps:
            kind = type(self).__name__
            raise ValueError(
                f"`{kind}` needs the sharpness-aware training step, which a plain "
                f"keras.Model does not run: compiled with {kind}, its `fit` would train "
                "with the inner optimizer alone. Wrap the model, "
                "`model = bisam_keras.SharpnessAwareModel(model)`, or put "
                "`bisam_keras.SharpnessAwareMixin` first among the bases of your Model "
                f"class. Received: a {kind} applying gradients outside that step"
            )

    def _decayed(self, grads, variables, scale=1.0):
        """`g + weight_decay * w`, times `scale` (the loss scale of scaled gradients)."""
        out = []
        for g, v in zip(grads, variables):
            if g is not None and (not hasattr(v, "path") or self._use_weight_decay(v)):
                g = tf.convert_to_tensor(g)  # densifies IndexedSlices: w is dense
                value = tf.convert_to_tensor(v)
                decay = tf.cast(self.weight_decay * scale, value.dtype) * value
                g = g + tf.cast(decay, g.dtype)
            out.append(g)
        return out

    def _loss_scale(self):
        if isinstance(self.inner_optimizer, keras.optimizers.LossScaleOptimizer):
            # The gradients arrive scaled; the inner optimizer divides them.
            return self.inner_optimizer.dynamic_scale
        return 1.0

    def apply(self, grads, trainable_variables=None):
        """Applies the descent gradients (plus the coupled decay) with the inner optimizer.

        Raises:
            ValueError: when called outside `SharpnessAwareMixin.train_step`
                (a model without the sharpness-aware step), whatever `rho`.
        """
        self._check_descent_step()
        if not self.built:
            with tf.name_scope(self.name):
                self.build(trainable_variables)
            self.built = True
        variables = (
            self._trainable_variables if trainable_variables is None else trainable_variables
        )
        if self.weight_decay:
            grads = self._decayed(list(grads), list(variables), scale=self._loss_scale())
        return self.inner_optimizer.apply(grads, trainable_variables=trainable_variables)

    def stateless_apply(self, optimizer_variables, grads, trainable_variables):
        # Keras' TensorFlow backend has no stateless_apply (the inner optimizer
        # raises); the coupled decay is implemented in `apply` only.
        if self.weight_decay:
            raise ValueError(
                "`weight_decay` is applied by `apply`, not `stateless_apply`. "
                f"Received: weight_decay={self.weight_decay}"
            )
        own = len(self._variables)
        new_trainable, new_inner = self.inner_optimizer.stateless_apply(
            optimizer_variables[own:], grads, trainable_variables
        )
        return new_trainable, list(optimizer_variables[:own]) + list(new_inner)

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.inner_optimizer.learning_rate = learning_rate

    @property
    def iterations(self):
        return self.inner_optimizer.iterations

    def scale_loss(self, loss):
        return self.inner_optimizer.scale_loss(loss)

    def finalize_variable_values(self, var_list):
        self.inner_optimizer.finalize_variable_values(var_list)

    def get_config(self):
        return {
            "name": self.name,
            "inner_optimizer": keras.saving.serialize_keras_object(self.inner_optimizer),
            "rho": self.rho,
            "adaptive": self.adaptive,
            "eta": self.eta,
            "swp_probability": self.swp_probability,
            "sds_fraction": self.sds_fraction,
            "micro_batch_size": self.micro_batch_size,
            "sync_perturbation": self.sync_perturbation,
            "seed": self.seed,
            "weight_decay": self.weight_decay,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        inner = keras.saving.deserialize_keras_object(
            config.pop("inner_optimizer"), custom_objects=custom_objects
        )
        return cls(inner, **config)
