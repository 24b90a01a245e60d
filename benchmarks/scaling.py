"""Data-parallel scaling of BiSAM and SAM under `tf.distribute.MirroredStrategy`.

Trains a CIFAR ResNet (ResNet-20 by default) on a synthetic CIFAR-shaped
batch of `batch_per_replica x replicas` images on 1, 2, ... devices, and
reports per device count the median step time, the throughput and the
scaling efficiency `throughput(n) / (n * throughput(1))`:

    python benchmarks/scaling.py --quick --json scaling.json

On a machine with GPUs the replicas are the visible GPUs. Without one they
are logical CPU devices carved out of the one physical CPU, which must happen
before TensorFlow starts its runtime: the script parses its flags and
configures the devices before anything starts the TensorFlow runtime (importing
does not). Logical CPU
devices share the same cores, so no speed-up is expected on CPU; there the
figures show what the strategy costs (per-replica dispatch and the all-reduce),
not how training scales.

Each device count gets one `MirroredStrategy`, created once: strategies over
the same devices in one process can draw colliding collective keys.
"""

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bisam_keras.testing import machine  # noqa: E402, I001  first: sets TensorFlow's CPU defaults
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import bisam_keras as bk  # noqa: E402
from bisam_keras.models import cifar_resnet  # noqa: E402

METHODS = ("sam", "bisam_neglog")
CPU_NOTE = (
    "logical CPU devices share the same physical cores: no speed-up is expected, "
    "the figures show the overhead of MirroredStrategy"
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (about a minute on CPU)")
    parser.add_argument(
        "--devices",
        type=int,
        nargs="+",
        default=None,
        help="device counts to run; defaults to 1, 2, 4, ... up to the GPUs, or 1 2 on CPU",
    )
    parser.add_argument("--model", default="resnet20", help="CIFAR ResNet name")
    parser.add_argument("--batch-per-replica", type=int, default=None, help="64 (--quick) or 128")
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model")
    parser.add_argument(
        "--jit-compile",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="compile the whole train step with XLA",
    )
    parser.add_argument("--json", type=str, default=None, help="write the results here")
    return parser.parse_args(argv)


def configure_devices(requested):
    """Device names for the largest requested count; splits the CPU if there is no GPU.

    Must run before any other TensorFlow call that starts the runtime.
    """
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        counts = requested or [n for n in (1, 2, 4, 8, 16) if n < len(gpus)] + [len(gpus)]
        if max(counts) > len(gpus):
            raise SystemExit(f"--devices asks for {max(counts)} GPUs; {len(gpus)} are visible")
        names = [d.name for d in tf.config.list_logical_devices("GPU")]
        return "GPU", sorted(set(counts)), names
    counts = requested or [1, 2]
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(max(counts))]
    )
    names = [d.name for d in tf.config.list_logical_devices("CPU")]
    return "CPU", sorted(set(counts)), names


def build(strategy, method, args):
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = bk.SharpnessAwareModel(cifar_resnet(args.model, num_classes=args.num_classes))
        sgd = keras.optimizers.SGD(0.01, momentum=0.9)
        if method == "sam":
            optimizer = bk.SAM(sgd, rho=0.05)
        else:
            optimizer = bk.BiSAM(sgd, rho=0.05, lower_bound=method.split("_")[1])
        model.compile(
            optimizer=optimizer,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=args.jit_compile,
        )
    return model


def time_steps(model, x, y, steps):
    """Seconds of each of `steps` `train_on_batch` calls (each waits for its result)."""
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - start)
    return times


def main(argv=None):
    args = parse_args(argv)
    kind, counts, names = configure_devices(args.devices)  # before the runtime starts

    batch = args.batch_per_replica or (64 if args.quick else 128)
    rounds = args.rounds or (3 if args.quick else 5)
    steps = args.steps or (3 if args.quick else 8)
    rng = np.random.default_rng(0)
    data, models = {}, {}
    for n in counts:
        strategy = tf.distribute.MirroredStrategy(names[:n])
        global_batch = batch * n
        data[n] = (
            rng.normal(size=(global_batch, 32, 32, 3)).astype("float32"),
            rng.integers(0, args.num_classes, size=(global_batch,)),
        )
        for method in args.methods:
            models[method, n] = build(strategy, method, args)
            time_steps(models[method, n], *data[n], args.warmup)  # tracing, compilation
    samples = {key: [] for key in models}
    for _ in range(rounds):
        for (method, n), model in models.items():
            samples[method, n].extend(time_steps(model, *data[n], steps))

    base = counts[0]
    results = {}
    for method in args.methods:
        rows = {}
        for n in counts:
            step_s = statistics.median(samples[method, n])
            rows[str(n)] = {"step_ms": 1000 * step_s, "images_per_s": batch * n / step_s}
        base_rate = rows[str(base)]["images_per_s"]
        for n in counts:
            rate = rows[str(n)]["images_per_s"]
            rows[str(n)]["efficiency"] = (rate / base_rate) / (n / base)
        results[method] = rows

    result = {
        "machine": machine.record(),
        "results": results,
        "note": CPU_NOTE if kind == "CPU" else "replicas are physical GPUs",
        "config": {
            "device_kind": kind,
            "devices": counts,
            "device_names": names[: max(counts)],
            "efficiency_base_devices": base,
            "model": args.model,
            "batch_per_replica": batch,
            "num_classes": args.num_classes,
            "rounds": rounds,
            "steps_per_round": steps,
            "warmup": args.warmup,
            "jit_compile": args.jit_compile,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
        },
    }
    print(machine.describe(result["machine"]))
    print(f"{args.model}, batch {batch} per replica, {kind} replicas")
    if kind == "CPU":
        print(f"NOTE: {CPU_NOTE}.")
    print(f"{'method':>13} {'devices':>7} {'ms/step':>9} {'images/s':>9} {'efficiency':>10}")
    for method, rows in results.items():
        for n, row in rows.items():
            print(
                f"{method:>13} {n:>7} {row['step_ms']:9.1f} "
                f"{row['images_per_s']:9.1f} {row['efficiency']:10.3f}"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
