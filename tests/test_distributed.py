"""tf.distribute: both perturbation semantics, checked numerically.

- Per-replica (the default): each replica perturbs with its own batch, which
  must equal `micro_batch_size = global_batch / replicas` on one device,
  BatchNorm statistics included.
- `sync_perturbation=True`: the ascent gradient is all-reduced, which must
  equal single-device training on the global batch (no BatchNorm).
"""

import functools
import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from tolerances import gamma, momentum_accumulation

import bisam_keras as bk
from bisam_keras.experiments import runner

GLOBAL_BATCH = 16
RNG = np.random.default_rng(0)
X = RNG.normal(size=(4 * GLOBAL_BATCH, 6)).astype("float32")
Y = RNG.integers(0, 3, size=(4 * GLOBAL_BATCH,))


def _mirrored():
    strategy = runner.make_strategy("mirrored")
    return strategy if strategy.num_replicas_in_sync == 2 else None


def mirrored():
    # One strategy for the whole session (shared with the CLI's runs):
    # separate MirroredStrategy objects over the same devices can collide.
    strategy = _mirrored()
    if strategy is None:
        pytest.skip("needs the two logical CPU devices that tests/conftest.py configures")
    return strategy


def make_model(batch_norm):
    keras.utils.set_random_seed(1)
    layers = [keras.Input((6,)), keras.layers.Dense(8)]
    if batch_norm:
        layers.append(keras.layers.BatchNormalization())
    layers += [keras.layers.ReLU(), keras.layers.Dense(3)]
    return keras.Sequential(layers)


def train(strategy, optimizer_cls=bk.BiSAM, batch_norm=True, jit_compile=False, **kwargs):
    with strategy.scope():
        model = bk.SharpnessAwareModel(make_model(batch_norm))
        model.compile(
            optimizer=optimizer_cls(keras.optimizers.SGD(0.1, momentum=0.9), rho=0.2, **kwargs),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=jit_compile,
        )
    history = model.fit(X, Y, batch_size=GLOBAL_BATCH, epochs=2, shuffle=False, verbose=0)
    return model, history.history


def gradient_scale(inner, x=X, y=Y):
    """max over weights of mean_b |d loss_b / d w|: the magnitudes a batch gradient sums."""
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    with tf.GradientTape() as tape:
        losses = loss(y, inner(x, training=True))
    jacobians = tape.jacobian(losses, inner.trainable_weights)
    return max(float(np.abs(j.numpy()).mean(0).max()) for j in jacobians)


def trajectory_atol(inner, steps, lr=0.1, momentum=0.9, x=X, y=Y):
    """Bound on the weight difference of two float32 trainings that sum in different orders.

    Each step's gradient is a sum over the batch (16) of per-example gradients, each a
    chain of dot products over the widths (8, 3) and a few elementwise roundings: at most
    gamma(32) times the summed magnitudes `gradient_scale` off, per run, so twice that
    between two runs (one device against two, XLA against the graph). SGD with momentum
    adds these up (`momentum_accumulation`), times lr; a factor 2 covers the first-order
    feedback through the curvature and the change of `gradient_scale` along the 4-16 steps,
    and the ascent step of SAM/BiSAM, whose perturbation error rho * gamma(32) moves the
    gradient by less than the gradient's own error (rho |H| < 1 here).
    """
    per_step = 2 * gamma(32) * gradient_scale(inner, x, y)
    return 2 * lr * momentum_accumulation(steps, momentum) * per_step


def assert_same_weights(a, b, atol):
    assert len(a.weights) == len(b.weights)
    for u, v in zip(a.weights, b.weights):
        np.testing.assert_allclose(u.numpy(), v.numpy(), atol=atol, err_msg=u.path)


@pytest.mark.parametrize("optimizer_cls", [bk.SAM, bk.BiSAM])
def test_per_replica_perturbation_equals_micro_batches(optimizer_cls):
    distributed, logs = train(mirrored(), optimizer_cls)
    single, single_logs = train(
        tf.distribute.get_strategy(), optimizer_cls, micro_batch_size=GLOBAL_BATCH // 2
    )
    atol = trajectory_atol(make_model(True), steps=8)  # 4 batches x 2 epochs
    assert_same_weights(distributed, single, atol)
    # The logged losses: means of 16 per-example cross-entropies (terms >= 0, so the sum's
    # relative error is gamma(16), and log-softmax a few ulps), on weights that differ by
    # `atol`; a logit moves by at most sum|x| * atol per layer, < 1e-5 relative here.
    np.testing.assert_allclose(logs["loss"], single_logs["loss"], rtol=1e-5)
    np.testing.assert_allclose(logs["perturbed_loss"], single_logs["perturbed_loss"], rtol=1e-5)
    # And it is not the global-batch perturbation: far more than the tolerance apart.
    whole, _ = train(tf.distribute.get_strategy(), optimizer_cls)
    kernel = distributed.inner_model.layers[0].kernel.numpy()
    assert np.abs(kernel - whole.inner_model.layers[0].kernel.numpy()).max() > 10 * atol


@pytest.mark.parametrize("optimizer_cls", [bk.SAM, bk.BiSAM])
def test_synced_perturbation_equals_single_device_global_batch(optimizer_cls):
    distributed, logs = train(mirrored(), optimizer_cls, batch_norm=False, sync_perturbation=True)
    single, single_logs = train(tf.distribute.get_strategy(), optimizer_cls, batch_norm=False)
    assert_same_weights(distributed, single, trajectory_atol(make_model(False), steps=8))
    # As in the test above: a mean of 16 non-negative terms on weights `atol` apart.
    np.testing.assert_allclose(logs["perturbed_loss"], single_logs["perturbed_loss"], rtol=1e-5)


@functools.cache
def _one_device_mirrored():
    return tf.distribute.MirroredStrategy(["/cpu:0"])


def test_xla_step_inside_a_mirrored_strategy():
    # XLA cannot compile a step whose mirrored variables live on two logical
    # CPU devices (plain Keras fails the same way: "Trying to access resource
    # ... located in device CPU:1 from device CPU:0"); a one-device
    # MirroredStrategy still runs the step through strategy.run under XLA.
    # The two-GPU case is in benchmarks/gpu_check.sh.
    xla, _ = train(_one_device_mirrored(), jit_compile=True)
    reference, _ = train(tf.distribute.get_strategy(), jit_compile=False)
    assert_same_weights(xla, reference, trajectory_atol(make_model(True), steps=8))


def test_batch_norm_statistics_agree_across_replicas():
    model, _ = train(mirrored())
    bn = model.inner_model.layers[1]
    for variable in (bn.moving_mean, bn.moving_variance):
        values = model.distribute_strategy.experimental_local_results(variable.value)
        np.testing.assert_array_equal(values[0].numpy(), values[1].numpy())


def test_sync_perturbation_without_strategy_is_an_error():
    model = bk.SharpnessAwareModel(make_model(False))
    with pytest.raises(ValueError, match="sync_perturbation"):
        model.compile(
            optimizer=bk.BiSAM(keras.optimizers.SGD(0.1), sync_perturbation=True),
            loss="sparse_categorical_crossentropy",
        )


def test_sync_perturbation_must_be_bool():
    with pytest.raises(ValueError, match="sync_perturbation=1"):
        bk.SAM(keras.optimizers.SGD(), sync_perturbation=1)


def test_save_and_load_under_mirrored_strategy(tmp_path):
    strategy = mirrored()
    model, _ = train(strategy)
    path = str(tmp_path / "m.keras")
    model.save(path)
    with strategy.scope():
        loaded = keras.models.load_model(path)
    assert_same_weights(model, loaded, atol=0)  # saved and loaded bit for bit
    assert loaded.optimizer.get_config()["rho"] == 0.2
    # Equal weights, the same kernels; only the split of `predict`'s batches over the
    # replicas may change the order of BatchNorm's and Dense's reductions (n <= 8 terms of
    # logits O(1)): gamma(8) * O(1) < 1e-6.
    np.testing.assert_allclose(loaded.predict(X, verbose=0), model.predict(X, verbose=0), atol=1e-6)


# ------------------------------------------------------------- multi-worker
WORKER = r"""
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np, tensorflow as tf
strategy = tf.distribute.MultiWorkerMirroredStrategy()
import keras, bisam_keras as bk
rng = np.random.default_rng(0)
x = rng.normal(size=(64, 6)).astype("float32"); y = rng.integers(0, 3, size=(64,))
options = tf.data.Options()
options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16).with_options(options)
with strategy.scope():
    keras.utils.set_random_seed(1)
    inner = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(3)])
    model = bk.SharpnessAwareModel(inner)
    model.compile(optimizer=bk.BiSAM(keras.optimizers.SGD(0.1), rho=0.2, sync_perturbation=True),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
model.fit(ds, epochs=1, verbose=0)
np.savez(sys.argv[1], *[w.numpy() for w in model.weights])
"""


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_multi_worker_training_equals_single_process(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    processes = []
    for index in range(2):
        env = dict(os.environ)
        task = {"type": "worker", "index": index}
        env["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": task})
        env["CUDA_VISIBLE_DEVICES"] = ""
        processes.append(
            subprocess.Popen(
                [sys.executable, str(script), str(tmp_path / f"w{index}.npz")],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        )
    try:
        outputs = [p.communicate(timeout=240)[0].decode(errors="replace") for p in processes]
    finally:
        for p in processes:
            p.kill()
    for p, out in zip(processes, outputs):
        assert p.returncode == 0, out[-3000:]
    w0 = np.load(tmp_path / "w0.npz")
    w1 = np.load(tmp_path / "w1.npz")
    # Single-process reference: the same global batches, the same semantics.
    keras.utils.set_random_seed(1)
    inner = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)]
    )
    model = bk.SharpnessAwareModel(inner)
    model.compile(
        optimizer=bk.BiSAM(keras.optimizers.SGD(0.1), rho=0.2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = rng.integers(0, 3, size=(64,))
    atol = trajectory_atol(inner, steps=4, momentum=0.0, x=x, y=y)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    for i, reference in enumerate(model.weights):
        np.testing.assert_array_equal(w0[f"arr_{i}"], w1[f"arr_{i}"])
        # Two workers sum the global batch in another order than one process: the bound
        # of `trajectory_atol` for 4 plain SGD steps.
        np.testing.assert_allclose(w0[f"arr_{i}"], reference.numpy(), atol=atol)


def test_model_built_outside_the_strategy_scope_is_an_error():
    strategy = mirrored()
    outside = bk.SharpnessAwareModel(make_model(False))
    inner_outside = make_model(False)
    with strategy.scope():
        for model, name in ((outside, "sharpness_aware_model"), (None, inner_outside.name)):
            model = model or bk.SharpnessAwareModel(inner_outside)
            with pytest.raises(ValueError, match=f"'{name}.*' was created outside the scope"):
                model.compile(
                    optimizer=bk.BiSAM(keras.optimizers.SGD(0.1)),
                    loss="sparse_categorical_crossentropy",
                )


def test_micro_batches_must_divide_the_per_replica_batch():
    # Global batch 12 over 2 replicas is 6 per replica, which 4 does not divide.
    strategy = mirrored()
    with strategy.scope():
        model = bk.SharpnessAwareModel(make_model(False))
        model.compile(
            optimizer=bk.BiSAM(keras.optimizers.SGD(0.1), micro_batch_size=4),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    with pytest.raises(tf.errors.InvalidArgumentError, match="per-replica batch"):
        model.fit(X[:12], Y[:12], batch_size=12, verbose=0)


def test_mixed_precision_under_mirrored_strategy():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        with mirrored().scope():
            inner = keras.Sequential(
                [
                    keras.Input((6,)),
                    keras.layers.Dense(8, activation="relu"),
                    keras.layers.Dense(3, dtype="float32"),
                ]
            )
            model = bk.SharpnessAwareModel(inner)
            model.compile(
                optimizer=bk.BiSAM(keras.optimizers.SGD(0.1), rho=0.2),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        before = [w.numpy() for w in model.trainable_weights]
        history = model.fit(X, Y, batch_size=GLOBAL_BATCH, epochs=2, verbose=0).history
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert np.all(np.isfinite(history["loss"])) and history["loss"][-1] < history["loss"][0]
    assert any(np.abs(w.numpy() - b).max() > 1e-4 for w, b in zip(model.trainable_weights, before))


@pytest.mark.slow
def test_backup_and_restore_under_mirrored_strategy(tmp_path):
    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("interrupted")

    def fresh():
        with mirrored().scope():
            model = bk.SharpnessAwareModel(make_model(True))
            model.compile(
                optimizer=bk.BiSAM(keras.optimizers.SGD(0.1, momentum=0.9), rho=0.2),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
        return model

    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    interrupted = fresh()
    with pytest.raises(RuntimeError, match="interrupted"):
        interrupted.fit(
            X,
            Y,
            batch_size=GLOBAL_BATCH,
            epochs=4,
            shuffle=False,
            verbose=0,
            callbacks=[backup, Interrupt()],
        )
    resumed = fresh()
    resumed.fit(
        X,
        Y,
        batch_size=GLOBAL_BATCH,
        epochs=4,
        shuffle=False,
        verbose=0,
        callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))],
    )
    uninterrupted = fresh()
    uninterrupted.fit(X, Y, batch_size=GLOBAL_BATCH, epochs=4, shuffle=False, verbose=0)
    # The same computation restored from a checkpoint: identical in practice; the bound of
    # two summation orders over the 16 steps is the most a correct resume can differ by.
    assert_same_weights(resumed, uninterrupted, trajectory_atol(make_model(True), steps=16))
