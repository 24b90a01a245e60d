"""Input-pipeline throughput against the train step it has to feed, on CPU.

Measures batches/s of the CIFAR training pipeline (`bisam_keras.data.load`:
cached decoded images, shuffle, pad-crop-flip, normalize, batch 128) and the
median `train_on_batch` time of CIFAR ResNet-20 with plain SGD, and reports
their ratio:

    python benchmarks/pipeline_speed.py --quick --json pipeline_speed.json

Reads the real CIFAR-10 folder (`--data-dir`) or, when it is absent,
synthetic CIFAR-shaped arrays. Target: the pipeline delivers batches at least
5x faster than the train step consumes them.
"""

import argparse
import json
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bisam_keras.testing import machine  # noqa: E402, I001  first: sets TensorFlow's CPU defaults
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bisam_keras import data  # noqa: E402
from bisam_keras.models import cifar_resnet  # noqa: E402

DEFAULT_DATA_DIR = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "shared", "data", "cifar10"
)


def make_splits(data_dir, batch_size, subset):
    if data_dir and os.path.isdir(data_dir):
        return data.load(
            "cifar10", data_dir=data_dir, batch_size=batch_size, subset=subset
        ), "folder"
    rng = np.random.default_rng(0)
    n = subset or 50_000
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    return data.from_arrays(x, rng.integers(0, 10, n), batch_size=batch_size), "synthetic"


def pipeline_rate(dataset, batches):
    """Batches per second over `batches` batches (after one to start the iterator)."""
    iterator = iter(dataset.repeat())
    next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches / (time.perf_counter() - start)


def step_time(batch_size, steps):
    """Median seconds of one ResNet-20 SGD `train_on_batch` after a warm-up."""
    keras.utils.set_random_seed(0)
    model = cifar_resnet("resnet20", num_classes=10)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x = tf.random.normal((batch_size, 32, 32, 3))
    y = tf.random.uniform((batch_size,), maxval=10, dtype=tf.int64)
    for _ in range(2):
        model.train_on_batch(x, y)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 10,000-example subset, fewer steps")
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="offline CIFAR-10 folder")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--json", type=str, default=None, help="write the results here")
    args = parser.parse_args(argv)
    subset = 10_000 if args.quick else None
    batches, steps = (40, 5) if args.quick else (200, 20)

    start = time.perf_counter()
    splits, source = make_splits(args.data_dir, args.batch_size, subset)
    load_s = time.perf_counter() - start
    first_epoch_s = time.perf_counter()
    first_epoch_batches = sum(1 for _ in splits.train)
    first_epoch_s = time.perf_counter() - first_epoch_s
    rate = pipeline_rate(splits.train, batches)
    step_s = step_time(args.batch_size, steps)
    results = {
        "source": source,
        "num_train": splits.num_train,
        "batch_size": args.batch_size,
        "load_s": round(load_s, 2),
        "first_epoch_batches_per_s": round(first_epoch_batches / first_epoch_s, 1),
        "pipeline_batches_per_s": round(rate, 1),
        "resnet20_sgd_step_s": round(step_s, 4),
        "step_batches_per_s": round(1 / step_s, 2),
        "ratio": round(rate * step_s, 1),
        "target_ratio": 5.0,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }
    record = machine.record()
    print(machine.describe(record))
    for key, value in results.items():
        print(f"{key:>28}: {value}")
    print("PASS" if results["ratio"] >= 5 else "FAIL", "(pipeline >= 5x the step rate)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": record, "config": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
