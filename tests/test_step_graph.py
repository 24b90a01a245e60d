"""The traced train step does no more network passes than the algorithm needs.

A regression check on the graph, not the clock: a counting layer inside the
inner model records how often its `call` runs while one `train_step` is traced
(once per forward pass written into the graph), and the traced graph's
convolutions and matrix products (forward and backward kernels, nested
functions included) are counted. BiSAM must cost what SAM costs: the same two
forward passes, and no more Conv2D/MatMul ops.

Passes per trace: SAM and BiSAM 2 (at `w` and `w + e`); `rho=0` 1; with
`micro_batch_size` the first micro-batch is traced outside the `tf.while_loop`
and the loop body once, 2 passes each, 4 in all; ESAM's data selection
(`sds_fraction < 1`) adds the documented third forward pass at `w + e` over the
whole batch.
"""

import collections

import keras
import numpy as np
import pytest
import tensorflow as tf

import bisam_keras as bk

NETWORK_OPS = ("Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter", "MatMul", "BatchMatMulV2")


class CountingLayer(keras.layers.Layer):
    """The identity; counts how often its `call` runs (at trace time in a graph)."""

    calls = 0

    def call(self, inputs):
        CountingLayer.calls += 1
        return inputs


def inner_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = CountingLayer()(keras.layers.ReLU()(x))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3)(x))


OPTIMIZERS = {
    "sam": lambda sgd: bk.SAM(sgd, rho=0.05),
    "bisam_neglog": lambda sgd: bk.BiSAM(sgd, rho=0.05, lower_bound="neglog"),
    "bisam_tanh": lambda sgd: bk.BiSAM(sgd, rho=0.05, lower_bound="tanh"),
    "a_bisam": lambda sgd: bk.BiSAM(sgd, rho=0.05, adaptive=True),
    "rho0": lambda sgd: bk.BiSAM(sgd, rho=0.0),
    "micro_batch": lambda sgd: bk.BiSAM(sgd, rho=0.05, micro_batch_size=4),
    "swp": lambda sgd: bk.BiSAM(sgd, rho=0.05, swp_probability=0.5),
    "sds": lambda sgd: bk.BiSAM(sgd, rho=0.05, sds_fraction=0.5),
}
PASSES = {
    "sam": 2,
    "bisam_neglog": 2,
    "bisam_tanh": 2,
    "a_bisam": 2,
    "rho0": 1,
    "micro_batch": 4,
    "swp": 2,
    "sds": 3,
}


def op_counts(graph_def):
    """Op types in a GraphDef and every function of its library."""
    nodes = list(graph_def.node)
    for function in graph_def.library.function:
        nodes.extend(function.node_def)
    return collections.Counter(node.op for node in nodes)


def trace_step(name):
    """`(forward passes, op counts)` of one traced `train_step` of `name`."""
    model = bk.SharpnessAwareModel(inner_model())
    model.compile(
        optimizer=OPTIMIZERS[name](keras.optimizers.SGD(0.1)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(0)
    data = (
        tf.constant(rng.normal(size=(8, 8, 8, 3)).astype("float32")),
        tf.constant(rng.integers(0, 3, size=(8,))),
    )
    model.train_on_batch(*data)  # builds the model, optimizer and metrics
    CountingLayer.calls = 0
    concrete = tf.function(model.train_step).get_concrete_function(data)
    return CountingLayer.calls, op_counts(concrete.graph.as_graph_def())


@pytest.fixture(scope="module")
def traces():
    return {name: trace_step(name) for name in OPTIMIZERS}


@pytest.mark.parametrize("name", sorted(PASSES))
def test_forward_passes_per_trace(traces, name):
    passes, _ = traces[name]
    assert passes == PASSES[name]


@pytest.mark.parametrize("name", ["bisam_neglog", "bisam_tanh", "a_bisam", "swp"])
def test_bisam_graph_has_no_more_network_ops_than_sam(traces, name):
    _, sam_ops = traces["sam"]
    _, ops = traces[name]
    for op in NETWORK_OPS:
        assert ops[op] <= sam_ops[op], (op, ops[op], sam_ops[op])
    assert ops["Conv2D"] == sam_ops["Conv2D"] > 0


def test_sam_graph_has_two_forward_backward_passes(traces):
    _, sam_ops = traces["sam"]
    _, sgd_ops = traces["rho0"]
    assert sgd_ops["Conv2D"] > 0
    for op in ("Conv2D", "Conv2DBackpropFilter", "MatMul"):
        assert sam_ops[op] == 2 * sgd_ops[op], (op, sam_ops[op], sgd_ops[op])


def test_data_selection_adds_a_forward_pass_but_no_backward_pass(traces):
    _, sam_ops = traces["sam"]
    _, sds_ops = traces["sds"]
    assert sds_ops["Conv2D"] == sam_ops["Conv2D"] * 3 // 2
    assert sds_ops["Conv2DBackpropFilter"] == sam_ops["Conv2DBackpropFilter"]


def test_data_selection_half_batch_has_a_static_shape():
    # With a static batch (8 here), ceil(0.5 * 8) = 4 is a Python int: the
    # selected half is a `tf.gather` of `top_k` indices with static shape
    # [4, ...], so the descent pass is traced (and compiled) for 4 examples,
    # not for an unknown batch size.
    model = bk.SharpnessAwareModel(inner_model())
    model.compile(
        optimizer=OPTIMIZERS["sds"](keras.optimizers.SGD(0.1)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(0)
    data = (
        tf.constant(rng.normal(size=(8, 8, 8, 3)).astype("float32")),
        tf.constant(rng.integers(0, 3, size=(8,))),
    )
    model.train_on_batch(*data)
    graph = tf.function(model.train_step).get_concrete_function(data).graph
    top_k = [op for op in graph.get_operations() if op.type == "TopKV2"]
    assert len(top_k) == 1
    assert top_k[0].outputs[1].shape.as_list() == [4]
    images = [
        op.outputs[0].shape.as_list()
        for op in graph.get_operations()
        if op.type == "GatherV2" and op.outputs[0].shape.rank == 4
    ]
    assert images == [[4, 8, 8, 3]]
