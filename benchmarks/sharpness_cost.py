"""What two sharpness measures cost on a CIFAR ResNet-20: the top Hessian eigenvalue
and a 21 x 21 loss landscape, on 1,000 real CIFAR-10 test images.

    nice python benchmarks/sharpness_cost.py --data-dir /work/shared/data/cifar10 \\
        --json sharpness_cost.json

Each measure runs twice, small and full size, so that the fixed cost (tracing
the compiled functions, reading the data) and the cost per Hessian-vector
product or per grid point can be told apart:

    per product    = (t(iterations) - t(1)) / (iterations - 1)
    per grid point = (t(21 x 21) - t(3 x 3)) / (441 - 9)

The script also times one forward pass and one gradient over the 1,000 images,
the units in which `bk.sharpness` counts its cost. The ResNet-20 is freshly
initialised (seed 0): the cost does not depend on the weights. BatchNorm runs
in inference mode, the measures' default.
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bisam_keras.testing import machine  # noqa: E402, I001  first: sets TensorFlow's CPU defaults
import keras  # noqa: E402
import numpy as np  # noqa: E402

import bisam_keras as bk  # noqa: E402
from bisam_keras import sharpness  # noqa: E402
from bisam_keras.sharpness import objectives  # noqa: E402
from bisam_keras.sharpness.evaluation import Evaluator  # noqa: E402


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def images(data_dir, num_examples):
    """The first `num_examples` CIFAR-10 test images, normalized, as `sharpness.Examples`."""
    splits = bk.data.load(
        "cifar10", data_dir=data_dir, batch_size=500, augment=False, subset=5 * num_examples
    )
    return sharpness.select(splits.test)


def pass_times(model, examples, batch_size, repeats=3):
    """Median seconds of one forward pass and one gradient over all `examples`."""
    evaluator = Evaluator(model, objectives.get(None, model), examples)
    batches = examples.batches(batch_size)
    zeros = evaluator.zeros()
    evaluator.values(zeros, *batches[0])  # trace
    evaluator.gradient(zeros, *batches[0])
    forward, backward = [], []
    for _ in range(repeats):
        forward.append(timed(lambda: [evaluator.values(zeros, x, y) for x, y in batches])[1])
        backward.append(timed(lambda: [evaluator.gradient(zeros, x, y) for x, y in batches])[1])
    return float(np.median(forward)), float(np.median(backward))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="the offline CIFAR-10 folder")
    parser.add_argument("--num-examples", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--iterations", type=int, default=20, help="power-iteration products")
    parser.add_argument("--resolution", type=int, default=21, help="landscape points per axis")
    parser.add_argument("--json", help="write the results there")
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    model = bk.models.build("resnet20", 10, input_shape=(32, 32, 3))
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    examples = images(args.data_dir, args.num_examples)
    y = examples.y
    common = {"batch_size": args.batch_size}

    forward, gradient = pass_times(model, examples, args.batch_size)
    _, eigen_1 = timed(
        sharpness.hessian_eigenvalues, model, examples, method="power", iterations=1, **common
    )
    eigen, eigen_n = timed(
        sharpness.hessian_eigenvalues,
        model,
        examples,
        method="power",
        iterations=args.iterations,
        **common,
    )
    _, grid_small = timed(sharpness.loss_landscape, model, examples, resolution=3, **common)
    landscape, grid_full = timed(
        sharpness.loss_landscape, model, examples, resolution=args.resolution, **common
    )
    points = args.resolution**2
    result = {
        "machine": machine.record(),
        "model": "resnet20",
        "parameters": int(sum(np.prod(v.shape) for v in model.trainable_variables)),
        "num_examples": len(y),
        "batch_size": args.batch_size,
        "seconds_forward_pass": forward,
        "seconds_gradient": gradient,
        "top_eigenvalue": {
            "iterations": args.iterations,
            "value": eigen.top,
            "residual": eigen.residuals[0],
            "seconds": eigen_n,
            "seconds_per_product": (eigen_n - eigen_1) / (args.iterations - 1),
            "seconds_fixed": eigen_1 - (eigen_n - eigen_1) / (args.iterations - 1),
            "forward_passes": eigen.forward_passes,
            "backward_passes": eigen.backward_passes,
        },
        "landscape": {
            "resolution": args.resolution,
            "seconds": grid_full,
            "seconds_per_point": (grid_full - grid_small) / (points - 9),
            "seconds_fixed": grid_small - 9 * (grid_full - grid_small) / (points - 9),
            "forward_passes": landscape.forward_passes,
            "loss_range": [float(np.min(landscape.loss)), float(np.max(landscape.loss))],
        },
    }
    print(machine.describe(result["machine"]))
    print(
        f"ResNet-20 ({result['parameters']:,} parameters), {len(y)} CIFAR-10 test images, "
        f"batches of {args.batch_size}"
    )
    print(f"  one forward pass: {forward:.2f} s; one gradient: {gradient:.2f} s")
    top = result["top_eigenvalue"]
    print(
        f"  top eigenvalue, power iteration x {args.iterations}: {top['seconds']:.1f} s "
        f"({top['seconds_per_product']:.2f} s per product, {top['seconds_fixed']:.1f} s "
        f"fixed; {top['forward_passes']} forward + {top['backward_passes']} backward passes); "
        f"lambda_max = {top['value']:.4g}, residual {top['residual']:.2g}"
    )
    grid = result["landscape"]
    print(
        f"  landscape {args.resolution} x {args.resolution}: {grid['seconds']:.1f} s "
        f"({grid['seconds_per_point']:.2f} s per point, {grid['seconds_fixed']:.1f} s fixed; "
        f"{grid['forward_passes']} forward passes)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
