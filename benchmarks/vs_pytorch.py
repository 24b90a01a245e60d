"""Train-step time of bisam-keras against a plain PyTorch SAM/BiSAM, same machine.

Both frameworks train the same CIFAR ResNet (ResNet-20: 272,474 parameters,
ResNet-56: 855,770) on the same synthetic batch with SGD, SAM and BiSAM (-log),
in one process and the same number of CPU threads (`torch.set_num_threads(n)`,
TensorFlow's intra- and inter-op pools set to `n`). After a warm-up, the
(framework, method) pairs are timed in interleaved rounds; the script reports
median steps and the ratio ours / PyTorch. The PyTorch step is
`benchmarks/torch_sam.py` (davda54/sam's two steps, BatchNorm statistics frozen
in the perturbed pass, as in bisam-keras).

    pip install -e ".[bench]"          # PyTorch; on a CPU-only machine: pip install torch==2.13.0
    python benchmarks/vs_pytorch.py --quick --json vs_pytorch.json

Without PyTorch the script says how to install it and exits with code 0.
"""

import argparse
import importlib.util
import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

METHODS = ("sgd", "sam", "bisam")
FRAMEWORKS = ("keras", "torch")
INSTALL_HINT = (
    'vs_pytorch.py needs PyTorch, an optional extra: pip install -e ".[bench]" '
    "(a CPU-only machine: pip install torch==2.13.0). Skipping."
)


def configure_threads(threads):
    """The same thread count for both frameworks, before either starts its pools."""
    import tensorflow as tf
    import torch

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(threads)


def keras_step(method, model_name, x, y, jit_compile):
    import keras
    import numpy as np

    import bisam_keras as bk

    keras.utils.set_random_seed(0)
    inner = bk.models.build(model_name, 10)
    sgd = keras.optimizers.SGD(0.01, momentum=0.9)
    model = inner if method == "sgd" else bk.SharpnessAwareModel(inner)
    optimizer = {
        "sgd": lambda: sgd,
        "sam": lambda: bk.SAM(sgd, rho=0.05),
        "bisam": lambda: bk.BiSAM(sgd, rho=0.05, lower_bound="neglog", mu=1.5),
        # Keras only (profile_step.py compares it with BiSAM): the paper's beta = gamma = 0.5.
        "e-bisam": lambda: bk.BiSAM(
            sgd,
            rho=0.05,
            lower_bound="neglog",
            mu=1.5,
            swp_probability=0.5,
            sds_fraction=0.5,
        ),
    }[method]()
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )
    parameters = sum(int(np.prod(v.shape)) for v in inner.trainable_variables)
    return lambda: model.train_on_batch(x, y), parameters


def torch_step(method, model_name, x, y, channels_last):
    import torch
    import torch_sam

    torch.manual_seed(0)
    model = torch_sam.CifarResNet(model_name, num_classes=10).train()
    x = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(y).long()
    step = torch_sam.make_step(method, model)
    parameters = sum(p.numel() for p in model.parameters())
    return lambda: step(x, y).item(), parameters


def check_lower_bound():
    """Our -log bound and the PyTorch one agree on random logits."""
    import numpy as np
    import torch

    import bisam_keras as bk
    from bisam_keras.testing import torch_reference

    rng = np.random.default_rng(1)
    logits = rng.normal(scale=3.0, size=(64, 10)).astype("float32")
    labels = rng.integers(0, 10, size=(64,))
    ours = float(np.mean(bk.losses.neglog_lower_bound(labels, logits, mu=1.5)))
    theirs = torch_reference.neglog_lower_bound(torch.from_numpy(logits), torch.from_numpy(labels))
    theirs = float(theirs)
    return abs(ours - theirs)


def time_calls(step, calls):
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a few minutes)")
    parser.add_argument("--models", nargs="+", default=["resnet20", "resnet56"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads, both")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per pair")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds")
    parser.add_argument("--steps", type=int, default=None, help="steps per round and pair")
    parser.add_argument(
        "--jit-compile",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="compile the Keras train step with XLA",
    )
    parser.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="run PyTorch in NHWC (channels_last), TensorFlow's layout",
    )
    parser.add_argument("--json", type=str, default=None, help="write the results here")
    args = parser.parse_args(argv)
    if importlib.util.find_spec("torch") is None:
        print(INSTALL_HINT)
        return None
    rounds = args.rounds or (3 if args.quick else 7)
    steps = args.steps or (2 if args.quick else 10)
    args.warmup = args.warmup or (2 if args.quick else 3)
    from bisam_keras.testing import machine  # first: sets TensorFlow's CPU defaults

    configure_threads(args.threads)

    import keras
    import numpy as np
    import tensorflow as tf
    import torch

    bound_error = check_lower_bound()
    rng = np.random.default_rng(0)
    x_np = rng.normal(size=(args.batch_size, 32, 32, 3)).astype("float32")
    y_np = rng.integers(0, 10, size=(args.batch_size,))
    x, y = tf.constant(x_np), tf.constant(y_np)
    results = {}
    print(machine.describe(machine.record()))
    for name in args.models:
        steps_by_pair, parameters = {}, {}
        for method in METHODS:
            steps_by_pair["keras", method], parameters["keras"] = keras_step(
                method, name, x, y, args.jit_compile
            )
            steps_by_pair["torch", method], parameters["torch"] = torch_step(
                method, name, x_np, y_np, args.channels_last
            )
        for step in steps_by_pair.values():
            time_calls(step, args.warmup)
        samples = {pair: [] for pair in steps_by_pair}
        for _ in range(rounds):
            for pair, step in steps_by_pair.items():
                samples[pair].extend(time_calls(step, steps))
        step_ms = {
            fw: {m: 1000 * statistics.median(samples[fw, m]) for m in METHODS} for fw in FRAMEWORKS
        }
        results[name] = {
            "parameters": parameters,
            "step_ms": step_ms,
            "ratios": {
                **{f"{m} keras/torch": step_ms["keras"][m] / step_ms["torch"][m] for m in METHODS},
                **{f"{fw} sam/sgd": step_ms[fw]["sam"] / step_ms[fw]["sgd"] for fw in FRAMEWORKS},
                **{
                    f"{fw} bisam/sam": step_ms[fw]["bisam"] / step_ms[fw]["sam"]
                    for fw in FRAMEWORKS
                },
            },
        }
        keras.backend.clear_session()
        print(f"{name} (parameters: keras {parameters['keras']:,}, torch {parameters['torch']:,})")
        for method in METHODS:
            k, t = step_ms["keras"][method], step_ms["torch"][method]
            print(f"  {method:>6}: keras {k:8.1f} ms  torch {t:8.1f} ms  keras/torch {k / t:.3f}")
        for ratio, value in results[name]["ratios"].items():
            if "/torch" not in ratio:
                print(f"  {ratio:>16}: {value:.3f}")
    result = {
        "machine": machine.record(),
        "models": results,
        "lower_bound_abs_difference": bound_error,
        "config": {
            "models": args.models,
            "batch_size": args.batch_size,
            "threads": args.threads,
            "warmup": args.warmup,
            "rounds": rounds,
            "steps_per_round": steps,
            "jit_compile": args.jit_compile,
            "torch_channels_last": args.channels_last,
            "load_average_1_5_15_min_at_end": os.getloadavg(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "torch": torch.__version__,
        },
    }
    print(f"|Q_keras - Q_torch| on random logits: {bound_error:.2e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
