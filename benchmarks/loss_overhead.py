"""Cost of the ascent loss alone: cross-entropy against BiSAM's lower bounds.

The paper's Table 11: forward and backward (the gradient with respect to the
logits) of the loss on a batch of 128 examples and 100 classes, repeated
10,000 times, for

- `ce_keras`: `keras.losses.SparseCategoricalCrossentropy(from_logits=True)`,
- `ce_tf`: the mean of `tf.nn.sparse_softmax_cross_entropy_with_logits`,
- `neglog`, `tanh`: the mean of `bk.losses.neglog_lower_bound` /
  `bk.losses.tanh_lower_bound` (XLA-compiled inside, whatever the caller),

in three modes (TensorFlow eager, `tf.function`, `tf.function(jit_compile=True)`)
and two ways:

- `per_call`: one call per repetition, dispatch included (what the paper timed);
- `looped`: all repetitions in a `tf.while_loop` inside one `tf.function`,
  which times the kernels. Each repetition shifts the logits by a multiple of
  the loop counter, so nothing can be hoisted out of the loop, and the losses
  and gradients are summed, so nothing is dead. Eager mode has no loop.

    python benchmarks/loss_overhead.py --quick --json loss_overhead.json
    python benchmarks/loss_overhead.py --quick --hlo-dir hlo/   # also write the HLO

Both wall-clock and process CPU seconds are recorded (CPU time is steadier on
a shared machine). The JSON's `hlo` section counts, in XLA's optimized
forward+backward of each loss, the fused kernels, the reductions over the
class axis and the transcendental (and division) ops applied to every logit;
`--hlo-dir` writes the optimized HLO text itself.

Target (issue 2): under XLA in the looped form, both bounds cost no more than
cross-entropy.
"""

import argparse
import collections
import json
import os
import platform
import re
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bisam_keras.testing import machine  # noqa: E402, I001  first: sets TensorFlow's CPU defaults
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import bisam_keras as bk  # noqa: E402

LOSSES = {
    "ce_keras": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    "ce_tf": lambda y, z: tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, z)),
    "neglog": lambda y, z: tf.reduce_mean(bk.losses.neglog_lower_bound(y, z)),
    "tanh": lambda y, z: tf.reduce_mean(bk.losses.tanh_lower_bound(y, z)),
}
CROSS_ENTROPIES = ("ce_keras", "ce_tf")
BOUNDS = ("neglog", "tanh")
MODES = ("eager", "function", "xla")
WAYS = {"eager": ("per_call",), "function": ("per_call", "looped"), "xla": ("per_call", "looped")}


def forward_backward(method, logits, labels):
    """The loss and its gradient with respect to the logits."""
    with tf.GradientTape() as tape:
        tape.watch(logits)
        loss = LOSSES[method](labels, logits)
    return loss, tape.gradient(loss, logits)


def loop(method, logits, labels, repetitions):
    """`repetitions` forward-backward passes in one `tf.while_loop`; sums the results.

    The loop bound is a tensor without `maximum_iterations`, so one XLA program
    serves every repetition count.
    """

    def body(i, total, grads):
        shifted = logits + 1e-6 * tf.cast(i, logits.dtype)  # not loop-invariant
        loss, grad = forward_backward(method, shifted, labels)
        return i + 1, total + loss, grads + grad

    _, total, grads = tf.while_loop(
        lambda i, total, grads: i < repetitions,
        body,
        (tf.constant(0), tf.zeros([]), tf.zeros_like(logits)),
    )
    return total, grads


# One tf.function per mode and way; the method is a Python argument (one trace each).
STEP = {
    "eager": forward_backward,
    "function": tf.function(forward_backward),
    "xla": tf.function(forward_backward, jit_compile=True),
}
LOOP = {"function": tf.function(loop), "xla": tf.function(loop, jit_compile=True)}


def runner(method, mode, way):
    """`run(logits, labels, repetitions)` -> the last (or summed) loss and gradient."""
    if way == "looped":
        return lambda logits, labels, reps: LOOP[mode](method, logits, labels, tf.constant(reps))

    def run(logits, labels, repetitions):
        for _ in range(repetitions):
            loss, grad = STEP[mode](method, logits, labels)
        return loss, grad

    return run


def seconds(run, logits, labels, repetitions):
    """`(wall, process CPU)` seconds of `repetitions` forward-backward passes, results fetched."""
    start, cpu_start = time.perf_counter(), time.process_time()
    loss, grad = run(logits, labels, repetitions)
    loss.numpy(), grad.numpy()
    return time.perf_counter() - start, time.process_time() - cpu_start


# Elementwise ops counted per logit: the transcendentals, and division and
# square roots, which cost several multiplies each on a CPU.
PER_LOGIT_OPS = (
    "exponential",
    "exponential-minus-one",
    "log",
    "log-plus-one",
    "logistic",
    "tanh",
    "power",
    "sqrt",
    "rsqrt",
    "divide",
)


def hlo_counts(hlo, batch_size, num_classes):
    """Kernel, reduction and per-logit op counts of an optimized HLO module."""
    entry = hlo[hlo.index("\nENTRY") :]
    logit_shape = rf"f32\[{batch_size},{num_classes}\]"
    per_logit = collections.Counter(
        re.findall(rf"= {logit_shape}\S* ({'|'.join(PER_LOGIT_OPS)})\(", hlo)
    )
    return {
        "fused_kernels": len(re.findall(r"= \S+ fusion\(", entry)),
        "row_reductions": len(re.findall(rf"= \w+\[{batch_size}\]\S* reduce\(", hlo)),
        "per_logit_ops": {op: per_logit[op] for op in PER_LOGIT_OPS if per_logit[op]},
    }


def hlo_report(logits, labels, hlo_dir=None):
    """`hlo_counts` of each loss's XLA forward+backward; the HLO text into `hlo_dir`."""
    report = {}
    for method in LOSSES:
        hlo = STEP["xla"].experimental_get_compiler_ir(method, logits, labels)(
            stage="optimized_hlo"
        )
        report[method] = hlo_counts(hlo, *logits.shape)
        if hlo_dir:
            os.makedirs(hlo_dir, exist_ok=True)
            with open(os.path.join(hlo_dir, f"{method}.hlo"), "w") as f:
                f.write(hlo)
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="1,000 repetitions, one trial (seconds)"
    )
    parser.add_argument("--repetitions", type=int, default=None, help="10,000 (1,000 --quick)")
    parser.add_argument(
        "--trials", type=int, default=None, help="timed trials (median); 3, or 1 with --quick"
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--json", type=str, default=None, help="write the results here")
    parser.add_argument(
        "--hlo-dir", type=str, default=None, help="write each loss's optimized HLO here"
    )
    args = parser.parse_args(argv)
    tf.get_logger().setLevel("ERROR")  # each function traces once per method, on purpose
    repetitions = args.repetitions or (1_000 if args.quick else 10_000)
    trials = args.trials or (1 if args.quick else 3)

    rng = np.random.default_rng(0)
    logits = tf.constant(rng.normal(size=(args.batch_size, args.num_classes)).astype("float32"))
    labels = tf.constant(rng.integers(0, args.num_classes, size=(args.batch_size,)))
    runs = {
        (method, mode, way): runner(method, mode, way)
        for method in LOSSES
        for mode in MODES
        for way in WAYS[mode]
    }
    for run in runs.values():  # warm-up: tracing and compilation
        seconds(run, logits, labels, 2)
    samples = {key: [] for key in runs}
    for _ in range(trials):  # interleaved, so that drift hits every entry alike
        for key, run in runs.items():
            samples[key].append(seconds(run, logits, labels, repetitions))

    timings = {method: {mode: {} for mode in MODES} for method in LOSSES}
    cpu_timings = {method: {mode: {} for mode in MODES} for method in LOSSES}
    for (method, mode, way), values in samples.items():
        timings[method][mode][way] = statistics.median(wall for wall, _ in values)
        cpu_timings[method][mode][way] = statistics.median(cpu for _, cpu in values)
    ratios = {
        mode: {
            way: {
                f"{bound}/{ce}": timings[bound][mode][way] / timings[ce][mode][way]
                for bound in BOUNDS
                for ce in CROSS_ENTROPIES
            }
            for way in WAYS[mode]
        }
        for mode in MODES
    }
    xla_looped = {m: timings[m]["xla"]["looped"] for m in LOSSES}
    fastest_ce = min(xla_looped[ce] for ce in CROSS_ENTROPIES)
    target = {
        "statement": "xla looped: each bound costs no more than the faster cross-entropy",
        **{f"{bound}/ce": xla_looped[bound] / fastest_ce for bound in BOUNDS},
    }
    target["met"] = all(target[f"{bound}/ce"] <= 1.0 for bound in BOUNDS)
    cpu_looped = {m: cpu_timings[m]["xla"]["looped"] for m in LOSSES}
    fastest_ce_cpu = min(cpu_looped[ce] for ce in CROSS_ENTROPIES)
    for bound in BOUNDS:
        target[f"{bound}/ce_cpu_time"] = cpu_looped[bound] / fastest_ce_cpu
    hlo = hlo_report(logits, labels, args.hlo_dir)
    result = {
        "seconds": timings,
        "cpu_seconds": cpu_timings,
        "ratios": ratios,
        "target": target,
        "hlo": hlo,
        "config": {
            "repetitions": repetitions,
            "trials": trials,
            "batch_size": args.batch_size,
            "num_classes": args.num_classes,
            "seconds_are": f"median over trials of the total for {repetitions} repetitions",
            "device": "GPU" if tf.config.list_logical_devices("GPU") else "CPU",
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
        },
    }
    print(f"seconds for {repetitions} forward+backward passes, batch {args.batch_size}, ", end="")
    print(f"{args.num_classes} classes (median of {trials})")
    columns = [(mode, way) for mode in MODES for way in WAYS[mode]]
    print(f"{'':>16}" + "".join(f"{mode + ' ' + way:>19}" for mode, way in columns))
    for method in LOSSES:
        cells = "".join(f"{timings[method][mode][way]:19.3f}" for mode, way in columns)
        print(f"{method:>16}{cells}")
    for bound in BOUNDS:
        for ce in CROSS_ENTROPIES:
            cells = "".join(f"{ratios[mode][way][f'{bound}/{ce}']:19.2f}" for mode, way in columns)
            print(f"{bound + '/' + ce:>16}{cells}")
    verdict = "met" if target["met"] else "NOT met"
    print(
        f"target ({target['statement']}): {verdict}; "
        + ", ".join(f"{bound}/ce = {target[f'{bound}/ce']:.2f}" for bound in BOUNDS)
        + " (CPU time: "
        + ", ".join(f"{bound}/ce = {target[f'{bound}/ce_cpu_time']:.2f}" for bound in BOUNDS)
        + ")"
    )
    print("XLA forward+backward (optimized HLO): kernels, class-axis reductions, ops per logit")
    for method, counts in hlo.items():
        print(
            f"{method:>16} {counts['fused_kernels']:3d} kernels, "
            f"{counts['row_reductions']} reductions, {counts['per_logit_ops']}"
        )
    result["machine"] = machine.record()
    print(machine.describe(result["machine"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
