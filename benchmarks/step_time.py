"""Train-step time of SGD, SAM and BiSAM on a CIFAR ResNet, in one process.

Every method trains the same CIFAR ResNet-20 (0.27M parameters) on the same
synthetic CIFAR-shaped batch. The methods are timed in interleaved rounds
after a warm-up, and the script reports per-step medians and their ratios:

    python benchmarks/step_time.py --quick --json step_time.json

Targets (issue 2): BiSAM/SAM <= 1.03 (the lower bound costs a few thousand
flops against millions in the network) and SAM/SGD <= 2.05 (two
forward-backward passes are the floor).
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

METHODS = ("sgd", "sam", "bisam_neglog", "bisam_tanh")


def build(method, model_name, num_classes, jit_compile, seed=0):
    keras.utils.set_random_seed(seed)
    inner = cifar_resnet(model_name, num_classes=num_classes)
    sgd = keras.optimizers.SGD(0.01, momentum=0.9)
    if method == "sgd":
        model, optimizer = inner, sgd
    else:
        model = bk.SharpnessAwareModel(inner)
        if method == "sam":
            optimizer = bk.SAM(sgd, rho=0.05)
        else:
            optimizer = bk.BiSAM(sgd, rho=0.05, lower_bound=method.split("_")[1])
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )
    return model


def time_steps(model, x, y, steps):
    """Median seconds per `train_on_batch` over `steps` calls."""
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - start)
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (under 2 minutes)")
    parser.add_argument("--model", default="resnet20", help="CIFAR ResNet name")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds")
    parser.add_argument("--steps", type=int, default=None, help="steps per round and method")
    parser.add_argument(
        "--jit-compile",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="compile the whole train step with XLA",
    )
    parser.add_argument("--json", type=str, default=None, help="write the results here")
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 7)
    steps = args.steps or (4 if args.quick else 10)

    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(args.batch_size, 32, 32, 3)).astype("float32"))
    y = tf.constant(rng.integers(0, args.num_classes, size=(args.batch_size,)))
    models = {m: build(m, args.model, args.num_classes, args.jit_compile) for m in METHODS}
    for model in models.values():  # warm-up: tracing and compilation
        time_steps(model, x, y, 3)
    samples = {m: [] for m in METHODS}
    for _ in range(rounds):
        for method, model in models.items():
            samples[method].extend(time_steps(model, x, y, steps))
    step_ms = {m: 1000 * statistics.median(s) for m, s in samples.items()}
    ratios = {
        "bisam_neglog/sam": step_ms["bisam_neglog"] / step_ms["sam"],
        "bisam_tanh/sam": step_ms["bisam_tanh"] / step_ms["sam"],
        "sam/sgd": step_ms["sam"] / step_ms["sgd"],
    }
    result = {
        "machine": machine.record(),
        "step_ms": step_ms,
        "ratios": ratios,
        "images_per_s": {m: 1000 * args.batch_size / t for m, t in step_ms.items()},
        "config": {
            "model": args.model,
            "batch_size": args.batch_size,
            "rounds": rounds,
            "steps_per_round": steps,
            "jit_compile": args.jit_compile,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
        },
    }
    print(machine.describe(result["machine"]))
    for method in METHODS:
        print(f"{method:>14}: {step_ms[method]:8.1f} ms/step")
    for name, value in ratios.items():
        print(f"{name:>17}: {value:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
