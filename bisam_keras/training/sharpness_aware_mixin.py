"""The two-pass sharpness-aware `train_step`, as a mixin for `keras.Model`.

```
x, y, sample_weight = data
A        = ascent objective: the compiled loss (SAM) or the lower bound Q (BiSAM)
y_pred   = f(x; w)                       # pass 1 at w: metrics, BatchNorm statistics
g_asc    = grad_w A(y, y_pred)
e        = rho * g_asc / ||g_asc||_2     # or its adaptive / stochastic variants
g        = grad_w L(x, y; w + e)         # pass 2 at w + e, without side effects
w        = inner_optimizer.apply(g, w)
```

Pass 2 runs the model in a `keras.StatelessScope` that maps each trainable
variable to `w + e`: no variable is written, so nothing has to be restored,
and the perturbed pass cannot touch BatchNorm statistics. With
`micro_batch_size=m` each micro-batch gets its own perturbation (mSAM) and the
descent gradients are averaged.
"""

import inspect

import keras
import numpy as np
import tensorflow as tf

from bisam_keras import perturbation as perturbation_lib
from bisam_keras.optimizers.sharpness_aware_optimizer import SharpnessAwareOptimizer
from bisam_keras.training import ascent_objective


def _unscale_for_distribution(value):
    """Undo Keras' per-replica `1 / num_replicas` loss scaling, for logging."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return value * replicas if replicas > 1 else value


def _all_reduce_flat(values, reduction):
    """All-reduces a list of tensors as one flat float32 vector.

    One collective, with the same shape on every replica (separate collectives
    per tensor can be matched out of order between replicas).
    """
    flat = tf.concat([tf.reshape(tf.cast(v, tf.float32), [-1]) for v in values], axis=0)
    flat = tf.distribute.get_replica_context().all_reduce(reduction, flat)
    parts = tf.split(flat, [int(np.prod(v.shape)) for v in values])
    return [tf.cast(tf.reshape(part, v.shape), v.dtype) for part, v in zip(parts, values)]


def _all_reduce_across_replicas(gradients):
    """Sums the ascent gradients of all replicas (`sync_perturbation=True`)."""
    if not tf.distribute.has_strategy() or tf.distribute.in_cross_replica_context():
        raise ValueError(
            "`sync_perturbation`=True needs a tf.distribute strategy: build and "
            "compile the model inside `strategy.scope()`. Received: no strategy"
        )
    return _all_reduce_flat(gradients, "sum")


def _mean_across_replicas(state_updates, gradients):
    """Averages floating state updates (BatchNorm statistics) over replicas.

    So that every replica holds the same statistics, the mean of the
    per-replica updates: what `micro_batch_size` = per-replica batch gives
    on one device.

    Collectives must run in the same order on every replica, and nothing in
    the data orders this all-reduce against the ascent's (`sync_perturbation`)
    or the optimizer's gradient all-reduce: each replica could launch them in
    another order, and the collectives then pair up wrongly ("Shape mismatch
    in the collective instance"). So it runs after the descent gradients
    exist (hence after the ascent's), and the gradients returned wait for it
    (hence the optimizer's all-reduce runs after it).

    Returns:
        `(state_updates, gradients)`.
    """
    if not tf.distribute.has_strategy() or tf.distribute.in_cross_replica_context():
        return state_updates, gradients
    if tf.distribute.get_replica_context().num_replicas_in_sync == 1:
        return state_updates, gradients
    keys = [k for k, v in state_updates.items() if v.dtype.is_floating]
    if not keys:
        return state_updates, gradients
    ready = [t for g in gradients if g is not None for t in tf.nest.flatten(g, True)]
    with tf.control_dependencies(ready):
        values = [tf.identity(state_updates[k]) for k in keys]
    means = _all_reduce_flat(values, "mean")
    with tf.control_dependencies(means):
        gradients = [
            None if g is None else tf.nest.map_structure(tf.identity, g, expand_composites=True)
            for g in gradients
        ]
    return {**state_updates, **dict(zip(keys, means))}, gradients


def _check_built_in_scope(model):
    """A model compiled under a strategy must have been created under it."""
    if not tf.distribute.has_strategy():
        return
    strategy = tf.distribute.get_strategy()
    models = [model] + [m for m in model._flatten_layers() if isinstance(m, keras.Model)]
    for m in models:
        if getattr(m, "_distribute_strategy", None) is not strategy:
            raise ValueError(
                f"Model {m.name!r} was created outside the scope of the "
                f"{type(strategy).__name__} it is compiled in: create the model (and "
                "its inner model) inside `strategy.scope()`."
            )


def _multi_worker_logs(model, logs):
    """Gives logs a batch axis under MultiWorkerMirroredStrategy.

    Works around Keras reducing per-replica logs with
    `strategy.reduce("MEAN", value, axis=0)`, which fails on scalars. The
    metrics are already synchronized, so the mean over workers is the value.
    """
    strategy = getattr(model, "_distribute_strategy", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return logs
    return {name: tf.reshape(value, [1]) for name, value in logs.items()}


def _batch_size(x):
    return tf.shape(next(t for t in tf.nest.flatten(x) if t is not None))[0]


def _split_optimizer(optimizer):
    """`(sharpness_aware, loss_scale)` from a possibly loss-scaled optimizer."""
    loss_scale = None
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        loss_scale, optimizer = optimizer, optimizer.inner_optimizer
    if not isinstance(optimizer, SharpnessAwareOptimizer):
        return None, None
    if isinstance(optimizer.inner_optimizer, keras.optimizers.LossScaleOptimizer):
        loss_scale = optimizer.inner_optimizer
    return optimizer, loss_scale


class SharpnessAwareMixin:
    """Gives a `keras.Model` subclass the sharpness-aware `train_step`.

    Put it first among the bases of your own model class to train it with
    `bisam_keras.SAM` or `bisam_keras.BiSAM` without wrapping it:

    ```python
    class MyModel(bk.SharpnessAwareMixin, keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.dense = keras.layers.Dense(10)

        def call(self, x):
            return self.dense(x)

    model = MyModel()
    model.compile(optimizer=bk.BiSAM(keras.optimizers.SGD(0.1)), loss=...)
    ```

    The step logs `loss` (at `w`), the compiled metrics (from the pass at
    `w`, at no extra cost) and `perturbed_loss`, the loss at `w + e`.
    """

    def compile(self, optimizer="rmsprop", *args, **kwargs):
        """Like `keras.Model.compile`; `optimizer` must be `SAM` or `BiSAM`.

        The ascent objective is derived here from `loss` and `loss_weights`
        (for BiSAM, the lower bound of each output, following its loss), so
        that a loss the optimizer cannot climb is refused now, not at the
        first step.
        """
        sharpness_aware, _ = _split_optimizer(optimizer)
        if sharpness_aware is None:
            raise ValueError(
                f"{type(self).__name__} must be compiled with a sharpness-aware "
                "optimizer such as `bisam_keras.BiSAM(inner_optimizer)` or "
                f"`bisam_keras.SAM(inner_optimizer)`. Received: optimizer={optimizer!r}"
            )
        _check_built_in_scope(self)
        if sharpness_aware.sync_perturbation and not tf.distribute.has_strategy():
            raise ValueError(
                "`sync_perturbation`=True needs a tf.distribute strategy: build and "
                "compile the model inside `strategy.scope()`. Received: no strategy"
            )
        arguments = inspect.signature(keras.Model.compile).bind(self, optimizer, *args, **kwargs)
        objective = ascent_objective.build(
            sharpness_aware,
            arguments.arguments.get("loss"),
            arguments.arguments.get("loss_weights"),
        )
        super().compile(optimizer, *args, **kwargs)
        # Not tracked (plain attributes): neither is state of the model.
        object.__setattr__(self, "_ascent_objective", objective)
        if getattr(self, "_perturbed_loss_tracker", None) is None:
            # Deliberately not tracked as a model metric: it has no meaning
            # in `evaluate()`, so it is logged by `train_step` alone.
            object.__setattr__(
                self, "_perturbed_loss_tracker", keras.metrics.Mean(name="perturbed_loss")
            )

    def compile_from_config(self, config):
        """Recompiles a loaded model (Keras skips models with a custom `compile`)."""
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = getattr(self, "_distribute_strategy", None)
        if strategy is None and not all(layer.built for layer in self._flatten_layers()):
            # Keras' TensorFlow trainer builds an unbuilt model (a subclassed
            # model, a Sequential without Input) at the first trace of
            # `train_step`, by its first forward pass. This step needs the
            # trainable variables before that pass: build from the first batch
            # now, as Keras does under a strategy.
            if data_batch is None:
                for _, _, it in iterator:
                    data_batch = next(it)
                    break
            self._symbolic_build(data_batch=data_batch)
            return
        # Works around keras-team/keras#20585: Keras builds a distributed model
        # from `strategy.reduce("MEAN", batch)`, which MultiWorkerMirroredStrategy
        # cannot do eagerly. Any one replica's batch serves for the build.
        if iterator is not None and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            for _, _, it in iterator:
                data_batch = tf.nest.map_structure(
                    lambda v: (
                        strategy.experimental_local_results(v)[0]
                        if isinstance(v, tf.distribute.DistributedValues)
                        else v
                    ),
                    next(it),
                )
                break
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def reset_metrics(self):
        super().reset_metrics()
        tracker = getattr(self, "_perturbed_loss_tracker", None)
        if tracker is not None:
            tracker.reset_state()

    @property
    def sharpness_aware_optimizer(self):
        """The `SAM`/`BiSAM` wrapper this model was compiled with."""
        sharpness_aware, _ = _split_optimizer(getattr(self, "optimizer", None))
        if sharpness_aware is None:
            raise ValueError(
                f"{type(self).__name__} was not compiled with a sharpness-aware "
                "optimizer (`bisam_keras.SAM` or `bisam_keras.BiSAM`). Received: "
                f"optimizer={getattr(self, 'optimizer', None)!r}"
            )
        return sharpness_aware

    # ------------------------------------------------------------ the step
    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        sam = self.sharpness_aware_optimizer
        trainable = self.trainable_variables
        if not self.optimizer.built:
            # The ascent reads the loss scale before the first `apply`, which
            # is where Keras would otherwise build the optimizer.
            with tf.name_scope(self.optimizer.name):
                self.optimizer.build(trainable)
        if sam.micro_batch_size is None:
            result = self._sharpness_aware_pass(x, y, sample_weight, trainable, step=0)
        else:
            result = self._micro_batch_passes(x, y, sample_weight, trainable)
        gradients, y_pred, state_updates, loss, perturbed_loss = result
        state_updates, gradients = _mean_across_replicas(state_updates, gradients)
        state = self.non_trainable_variables
        for index, value in state_updates.items():
            state[index].assign(value)
        with sam.descent_step():
            self.optimizer.apply(gradients, trainable)

        batch_size = _batch_size(x)
        self._loss_tracker.update_state(_unscale_for_distribution(loss), sample_weight=batch_size)
        self._perturbed_loss_tracker.update_state(
            _unscale_for_distribution(perturbed_loss), sample_weight=batch_size
        )
        logs = self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
        logs["perturbed_loss"] = self._perturbed_loss_tracker.result()
        return _multi_worker_logs(self, logs)

    def test_step(self, data):
        return _multi_worker_logs(self, super().test_step(data))

    def _sharpness_aware_pass(self, x, y, sample_weight, trainable, step):
        """One sharpness-aware gradient on one (micro-)batch.

        Returns `(gradients, y_pred, state_updates, loss, perturbed_loss)`:
        the descent gradients at `w + e`, the predictions and the loss at `w`,
        the non-trainable state written by the pass at `w` (BatchNorm
        statistics, RNG state) as `{index in non_trainable_variables: value}`,
        and the loss at `w + e`.
        """
        sam, loss_scale = _split_optimizer(self.optimizer)
        with tf.GradientTape() as tape:
            # Each variable maps to its own value: the scope then collects the
            # state updates (BatchNorm, RNG) instead of applying them, and
            # regularizers read the weights through it.
            mapping = [(v, v.value) for v in trainable]
            with keras.StatelessScope(state_mapping=mapping, collect_losses=True) as scope:
                y_pred = self(x, training=True)
                loss = self.compute_loss(
                    x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
                )
            if sam.rho > 0.0:
                ascent = self._ascent(x, y, y_pred, sample_weight)
            else:
                ascent = loss
            if loss_scale is not None:
                ascent = loss_scale.scale_loss(ascent)
        gradients = tape.gradient(ascent, trainable)
        state_updates = {}
        for index, variable in enumerate(self.non_trainable_variables):
            value = scope.get_current_value(variable)
            if value is not None:
                state_updates[index] = value
        if sam.rho == 0.0:
            # The plain inner optimizer: the gradient at w is the descent gradient.
            return gradients, y_pred, state_updates, loss, loss

        gradients = [tf.zeros_like(v) if g is None else g for g, v in zip(gradients, trainable)]
        if sam.sync_perturbation:
            gradients = _all_reduce_across_replicas(gradients)
        finite = None
        if loss_scale is not None:
            gradients = [tf.cast(g, tf.float32) / loss_scale.dynamic_scale for g in gradients]
            finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in gradients])
            gradients = [tf.where(finite, g, tf.zeros_like(g)) for g in gradients]
        step_seed = tf.random.experimental.stateless_fold_in(sam.step_seed(), step)
        eps = sam.perturbation(gradients, trainable, step_seed=step_seed)
        perturbed = [v + tf.cast(e, v.dtype) for v, e in zip(trainable, eps)]

        if sam.sds_fraction < 1.0:
            x, y, sample_weight = self._select_sharp_examples(
                x, y, sample_weight, y_pred, trainable, perturbed
            )
        with tf.GradientTape() as tape:
            tape.watch(perturbed)
            mapping = list(zip(trainable, perturbed))
            with keras.StatelessScope(state_mapping=mapping, collect_losses=True):
                y_pred_perturbed = self(x, training=True)
                perturbed_loss = self.compute_loss(
                    x=x,
                    y=y,
                    y_pred=y_pred_perturbed,
                    sample_weight=sample_weight,
                    training=True,
                )
            scaled = perturbed_loss if loss_scale is None else loss_scale.scale_loss(perturbed_loss)
        gradients = tape.gradient(scaled, perturbed)
        if finite is not None:
            # A non-finite ascent gradient makes the loss-scale optimizer skip
            # the step (and lower its scale), exactly as for the descent step.
            nan = tf.constant(float("nan"))
            gradients = [tf.where(finite, g, tf.cast(nan, g.dtype)) for g in gradients]
        return gradients, y_pred, state_updates, loss, perturbed_loss

    def _ascent(self, x, y, y_pred, sample_weight):
        """The ascent objective at `w`: per output (BiSAM's bounds), the
        optimizer's own, or the compiled loss (SAM)."""
        objective = getattr(self, "_ascent_objective", None)
        if objective is not None:
            return objective.value(y, y_pred, sample_weight, output_names=self._output_names())
        ascent = self.sharpness_aware_optimizer.ascent_loss(y, y_pred, sample_weight)
        if ascent is None:
            ascent = self._compiled_loss(x, y, y_pred, sample_weight)
        return ascent

    def _output_names(self):
        names = getattr(self, "output_names", None)
        if names is None and hasattr(self, "inner_model"):
            names = getattr(self.inner_model, "output_names", None)
        return names

    def _compiled_loss(self, x, y, y_pred, sample_weight):
        """The compiled loss alone, without regularization (SAM's ascent objective)."""
        compiled = getattr(self, "_compile_loss", None)
        if compiled is None:
            # No compiled loss: the user's own `compute_loss` is the objective.
            return self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight)
        return compiled(y, y_pred, sample_weight)

    def _per_example_ascent(self, y, y_pred):
        """The ascent objective of each example, `(batch,)` (ESAM's selection).

        Per-position objectives (a segmenter's pixels) are averaged over each
        example's positions.
        """
        objective = getattr(self, "_ascent_objective", None)
        values = None
        if objective is not None:
            values = objective.per_example(y, y_pred, output_names=self._output_names())
        else:
            values = self.sharpness_aware_optimizer.ascent_losses_per_example(y, y_pred)
        if values is None:
            loss = keras.losses.get(self.loss) if isinstance(self.loss, str) else self.loss
            if isinstance(loss, keras.losses.Loss):
                values = loss.call(y, y_pred)
            elif callable(loss):
                values = loss(y, y_pred)
        if values is not None and values.shape.rank is not None and values.shape.rank > 1:
            values = tf.reduce_mean(values, axis=list(range(1, values.shape.rank)))
        if values is None or values.shape.rank != 1:
            raise ValueError(
                "`sds_fraction` < 1 needs a loss with one value per example (a "
                "keras.losses.Loss or a loss function of one output). Received: "
                f"loss={self.loss!r}"
            )
        return tf.cast(values, tf.float32)

    def _select_sharp_examples(self, x, y, sample_weight, y_pred, trainable, perturbed):
        """ESAM's sharpness-sensitive data selection, with static shapes.

        Keeps the `ceil(sds_fraction * batch)` examples whose ascent loss rises
        most from `w` to `w + e`, by `top_k` (not a boolean mask).
        """
        mapping = list(zip(trainable, perturbed))
        with keras.StatelessScope(state_mapping=mapping):
            y_pred_perturbed = self(x, training=True)
        sharpness = self._per_example_ascent(y, y_pred_perturbed) - self._per_example_ascent(
            y, y_pred
        )
        indices = perturbation_lib.top_k_indices(
            tf.stop_gradient(sharpness), self.sharpness_aware_optimizer.sds_fraction
        )

        def take(t):
            return None if t is None else tf.gather(t, indices)

        return tf.nest.map_structure(take, (x, y, sample_weight))

    def _micro_batch_passes(self, x, y, sample_weight, trainable):
        """mSAM: one perturbation per micro-batch; descent gradients averaged.

        BatchNorm statistics are updated once, with the mean over micro-batches
        of their updates (as per-replica statistics are under `tf.distribute`).

        A batch that `micro_batch_size` does not divide (typically the last,
        smaller batch of an epoch) raises `InvalidArgumentError`: when the
        step is traced if the batch dimension is static (eagerly, or with
        `drop_remainder=True`), else from an assertion that every use of the
        batch waits for. Under XLA (`jit_compile=True`) TensorFlow compiles
        assertions away: the step's loss, perturbed loss and gradients are
        then NaN, and its state updates are dropped, rather than a result
        computed on part of the batch.
        """
        size = self.sharpness_aware_optimizer.micro_batch_size
        message = (
            f"`micro_batch_size`={size} must divide the batch size (under "
            "tf.distribute, the per-replica batch: global batch / replicas); "
            "drop the last partial batch (`dataset.batch(..., drop_remainder=True)`)"
        )
        static_batch = next(t for t in tf.nest.flatten(x) if t is not None).shape[0]
        if static_batch is not None and static_batch % size:
            # Known when the step is traced (eagerly, or `drop_remainder=True`):
            # the same error type as the run-time check, raised before any op.
            raise tf.errors.InvalidArgumentError(
                None, None, f"{message}. Received: batch size={static_batch}"
            )
        batch = _batch_size(x)
        divides = tf.equal(batch % size, 0)
        check = tf.debugging.Assert(divides, [message + ". Received: batch size", batch])
        data = (x, y, sample_weight)
        with tf.control_dependencies([check]):
            # Everything that indexes the batch reads it through the check, so
            # the assertion fails before an out-of-range gather can.
            batch = tf.identity(batch)
            data = tf.nest.map_structure(lambda t: None if t is None else tf.identity(t), data)
        count = batch // size

        def positions(index):
            # A static-size range, so that XLA sees fixed shapes.
            return index * size + tf.range(size)

        def chunk(structure, index):
            def take(t):
                return None if t is None else tf.gather(t, positions(index))

            return tf.nest.map_structure(take, structure)

        # The first micro-batch runs outside the loop: its trace tells which
        # state variables the forward pass writes and the predictions' structure.
        first = self._sharpness_aware_pass(*chunk(data, 0), trainable, step=0)
        gradients, y_pred, state_updates, loss, perturbed_loss = first
        state_vars = list(state_updates)
        float_state = [state_updates[i].dtype.is_floating for i in state_vars]
        flat_pred = tf.nest.flatten(y_pred)

        def rows(index):
            return positions(index)[:, None]

        # Predictions go into full-batch buffers (XLA-friendly, no TensorArray).
        buffers = [
            tf.tensor_scatter_nd_update(
                tf.zeros(tf.concat([[batch], tf.shape(p)[1:]], axis=0), p.dtype), rows(0), p
            )
            for p in flat_pred
        ]

        def body(index, gradients, states, loss, perturbed_loss, buffers):
            result = self._sharpness_aware_pass(*chunk(data, index), trainable, step=index)
            new_gradients, new_pred, new_states, new_loss, new_perturbed = result
            gradients = [a + b for a, b in zip(gradients, new_gradients)]
            states = [
                (s + new_states[v]) if is_float else new_states[v]
                for s, v, is_float in zip(states, state_vars, float_state)
            ]
            buffers = [
                tf.tensor_scatter_nd_update(b, rows(index), p)
                for b, p in zip(buffers, tf.nest.flatten(new_pred))
            ]
            return (
                index + 1,
                gradients,
                states,
                loss + new_loss,
                perturbed_loss + new_perturbed,
                buffers,
            )

        _, gradients, states, loss, perturbed_loss, buffers = tf.while_loop(
            lambda index, *_: index < count,
            body,
            (
                tf.constant(1),
                gradients,
                [state_updates[v] for v in state_vars],
                loss,
                perturbed_loss,
                buffers,
            ),
        )
        scale = 1.0 / tf.cast(count, tf.float32)
        gradients = [g * tf.cast(scale, g.dtype) for g in gradients]
        states = [
            s * tf.cast(scale, s.dtype) if is_float else s
            for s, is_float in zip(states, float_state)
        ]
        y_pred = tf.nest.pack_sequence_as(y_pred, buffers)
        loss = loss * tf.cast(scale, loss.dtype)
        perturbed_loss = perturbed_loss * tf.cast(scale, perturbed_loss.dtype)

        # Reached only where the assertion is compiled away (XLA): a batch that
        # `size` does not divide gives NaN, never a plausible partial result.
        def poison(t):
            return tf.where(divides, t, tf.cast(float("nan"), t.dtype))

        gradients = [poison(g) for g in gradients]
        loss, perturbed_loss = poison(loss), poison(perturbed_loss)
        current = self.non_trainable_variables
        states = [tf.where(divides, s, current[v].value) for s, v in zip(states, state_vars)]
        return gradients, y_pred, dict(zip(state_vars, states)), loss, perturbed_loss
