"""Train-step time, images/s and peak memory of the SAM family on the paper's models.

The paper's Table 10 (Appendix B) times SAM and BiSAM per CIFAR epoch on five
models. This script times SGD, SAM, BiSAM (-log and tanh), A-BiSAM
(`adaptive=True`) and E-BiSAM (`swp_probability=0.5`, `sds_fraction=0.5`) on
the same synthetic CIFAR-shaped batch, in one process: per model, every method
is built and warmed up, then the methods are timed in interleaved rounds and
the table gives median steps. The estimated epoch is `ceil(50000 / batch)`
median steps (no input pipeline).

    python benchmarks/epoch_time.py --quick --json epoch_time.json --plot step_time.png
    python benchmarks/epoch_time.py --jit-compile --mixed-precision --json epoch_time.json  # GPU
    python benchmarks/epoch_time.py --quick --breakdown --json epoch_time.json

`--breakdown` also times, per model, the passes an E-BiSAM step is made of
(forward+backward on the whole and on half the batch, forward alone on the
whole batch, the SWP mask), interleaved, in wall and process CPU seconds, and
gives the E-BiSAM / BiSAM ratio they predict:
`(fb(b) + f(b) + fb(b/2) + mask) / (2 fb(b))`. The arithmetic floor 0.917
takes `fb(b/2) = fb(b) / 2` and `f = fb / 3`; the breakdown shows what the
kernels of this machine give instead.

Peak memory: on a GPU, TensorFlow's allocator peak over one step
(`tf.config.experimental.get_memory_info("GPU:0")["peak"]` after
`reset_memory_stats`), in the timing process. On the CPU that counter does
not see a graph step's temporaries, and the process's maximum resident set
size only grows, so the CPU proxy (`--cpu-memory`, on by default on CPUs) runs
SAM and BiSAM once more each in a fresh child process and reports its peak
RSS over two steps after the warm-up (Linux VmHWM, reset through
`/proc/self/clear_refs`), beside the lifetime peak (`resource.getrusage`),
which tracing dominates.
"""

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bisam_keras.testing import machine  # noqa: E402, I001  first: sets TensorFlow's CPU defaults
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import bisam_keras as bk  # noqa: E402

MODELS = ("resnet56", "wrn28_2", "wrn28_10", "vgg19_bn", "densenet121")
QUICK_MODELS = ("resnet20", "resnet56")
METHODS = ("sgd", "sam", "bisam_neglog", "bisam_tanh", "a_bisam", "e_bisam")
CIFAR_TRAIN_SIZE = 50_000


def make_optimizer(method, rho=0.05):
    """The optimizer of `method`, around `SGD(0.01, momentum=0.9)`."""
    sgd = keras.optimizers.SGD(0.01, momentum=0.9)
    if method == "sgd":
        return sgd
    if method == "sam":
        return bk.SAM(sgd, rho=rho)
    if method in ("bisam_neglog", "bisam_tanh"):
        return bk.BiSAM(sgd, rho=rho, lower_bound=method.split("_")[1])
    if method == "a_bisam":
        return bk.BiSAM(sgd, rho=rho, lower_bound="neglog", adaptive=True)
    if method == "e_bisam":
        return bk.BiSAM(sgd, rho=rho, lower_bound="neglog", swp_probability=0.5, sds_fraction=0.5)
    raise ValueError(f"`method` must be one of {METHODS}. Received: method={method!r}")


def build(method, model_name, num_classes, jit_compile, seed=0):
    keras.utils.set_random_seed(seed)
    inner = bk.models.build(model_name, num_classes)
    model = inner if method == "sgd" else bk.SharpnessAwareModel(inner)
    model.compile(
        optimizer=make_optimizer(method),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )
    return model


def time_steps(model, x, y, steps, cpu_times=None):
    """Seconds of each of `steps` `train_on_batch` calls; process CPU seconds into `cpu_times`."""
    times = []
    for _ in range(steps):
        start, cpu = time.perf_counter(), time.process_time()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - start)
        if cpu_times is not None:
            cpu_times.append(time.process_time() - cpu)
    return times


def memory_device():
    return "GPU:0" if tf.config.list_logical_devices("GPU") else "CPU:0"


def peak_step_memory_mb(model, x, y, device):
    """TensorFlow allocator peak (MiB) over one step, or None where unsupported."""
    try:
        tf.config.experimental.reset_memory_stats(device)
        model.train_on_batch(x, y)
        return tf.config.experimental.get_memory_info(device)["peak"] / 2**20
    except (ValueError, tf.errors.OpError):
        return None


def max_rss_mb():
    """The process's maximum resident set size so far (MiB; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss():
    """Resets the kernel's peak-RSS mark (VmHWM); False where Linux does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb():
    """VmHWM of this process (MiB): the peak RSS since start or the last reset."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return max_rss_mb()


def memory_probe(model_name, method, args, x, y):
    """Run in a child process: peak RSS (MiB) of `method`'s steady-state steps.

    The first steps trace and optimize the graph, which dominates the process's
    lifetime peak; the peak mark is reset after them, so `steady_peak_rss_mb`
    covers the next steps alone (weights, optimizer state, activations and
    whatever the allocators keep cached).
    """
    model = build(method, model_name, args.num_classes, args.jit_compile)
    time_steps(model, x, y, args.warmup)
    reset = reset_peak_rss()
    time_steps(model, x, y, 2)
    return {
        "steady_peak_rss_mb": peak_rss_mb() if reset else None,
        "lifetime_max_rss_mb": max_rss_mb(),
    }


def cpu_memory_proxy(model_name, method, args):
    """Peak RSS of a fresh process that trains `model_name` with `method`."""
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--memory-probe",
        model_name,
        method,
        "--batch-size",
        str(args.batch_size),
        "--num-classes",
        str(args.num_classes),
        "--warmup",
        str(args.warmup),
        "--jit-compile" if args.jit_compile else "--no-jit-compile",
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def e_bisam_breakdown(model_name, num_classes, x, y, rounds):
    """Median seconds (wall and CPU) of the passes of an E-BiSAM step, and its predicted ratio."""
    from bisam_keras import perturbation

    keras.utils.set_random_seed(0)
    model = bk.models.build(model_name, num_classes)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    variables = model.trainable_variables
    half = -(-x.shape[0] // 2)  # ceil(b / 2), the E-BiSAM default sds_fraction = 0.5

    def stateless(fn):
        # As in the step: the passes read the weights through a StatelessScope.
        with keras.StatelessScope(state_mapping=[(v, v.value) for v in variables]):
            return fn()

    @tf.function
    def forward_backward(x, y):
        with tf.GradientTape() as tape:
            loss = stateless(lambda: loss_fn(y, model(x, training=True)))
        return tape.gradient(loss, variables)

    @tf.function
    def forward(x):
        return stateless(lambda: model(x, training=True))

    @tf.function
    def swp_mask(seed):
        return perturbation.stochastic_weight_mask([tf.ones_like(v) for v in variables], 0.5, seed)

    seed = tf.constant([1, 2], tf.int32)
    passes = {
        "forward_backward_full": lambda: forward_backward(x, y),
        "forward_backward_half": lambda: forward_backward(x[:half], y[:half]),
        "forward_full": lambda: forward(x),
        "swp_mask": lambda: swp_mask(seed),
    }
    samples = {name: ([], []) for name in passes}
    for round_ in range(rounds + 2):  # two untimed rounds: tracing, warm-up
        for name, run in passes.items():
            start, cpu = time.perf_counter(), time.process_time()
            tf.nest.map_structure(lambda t: t.numpy(), run())
            if round_ >= 2:
                samples[name][0].append(time.perf_counter() - start)
                samples[name][1].append(time.process_time() - cpu)
    result = {}
    for clock, index in (("wall", 0), ("cpu", 1)):
        ms = {name: 1000 * statistics.median(s[index]) for name, s in samples.items()}
        full = ms["forward_backward_full"]
        ms["predicted_e_bisam/bisam"] = (
            full + ms["forward_full"] + ms["forward_backward_half"] + ms["swp_mask"]
        ) / (2 * full)
        ms["half/full"] = ms["forward_backward_half"] / full
        ms["forward/forward_backward"] = ms["forward_full"] / full
        result[clock] = ms
    return result


def bench_model(model_name, args, x, y, rounds, steps, device):
    models = {m: build(m, model_name, args.num_classes, args.jit_compile) for m in METHODS}
    for model in models.values():  # warm-up: tracing and compilation
        time_steps(model, x, y, args.warmup)
    samples = {m: [] for m in METHODS}
    cpu_samples = {m: [] for m in METHODS}
    for _ in range(rounds):
        for method, model in models.items():
            samples[method].extend(time_steps(model, x, y, steps, cpu_samples[method]))
    peak_mb = None
    if device.startswith("GPU"):
        peak_mb = {m: peak_step_memory_mb(model, x, y, device) for m, model in models.items()}
    step_ms = {m: 1000 * statistics.median(s) for m, s in samples.items()}
    steps_per_epoch = math.ceil(CIFAR_TRAIN_SIZE / args.batch_size)
    ratios = {
        "sam/sgd": step_ms["sam"] / step_ms["sgd"],
        "bisam/sam": step_ms["bisam_neglog"] / step_ms["sam"],
        "bisam_tanh/sam": step_ms["bisam_tanh"] / step_ms["sam"],
        "a_bisam/bisam": step_ms["a_bisam"] / step_ms["bisam_neglog"],
        "e_bisam/bisam": step_ms["e_bisam"] / step_ms["bisam_neglog"],
        # Process CPU time is steadier than wall time on a shared machine.
        "e_bisam/bisam_cpu_time": statistics.median(cpu_samples["e_bisam"])
        / statistics.median(cpu_samples["bisam_neglog"]),
    }
    cpu_proxy = None
    if device.startswith("GPU"):
        ratios["bisam/sam_peak_memory"] = peak_mb["bisam_neglog"] / peak_mb["sam"]
    elif args.cpu_memory:
        cpu_proxy = {m: cpu_memory_proxy(model_name, m, args) for m in ("sam", "bisam_neglog")}
        key = (
            "steady_peak_rss_mb"
            if cpu_proxy["sam"]["steady_peak_rss_mb"]
            else "lifetime_max_rss_mb"
        )
        ratios["bisam/sam_peak_rss_cpu_proxy"] = (
            cpu_proxy["bisam_neglog"][key] / cpu_proxy["sam"][key]
        )
    inner = models["sgd"]
    breakdown = None
    if args.breakdown:
        breakdown = e_bisam_breakdown(model_name, args.num_classes, x, y, rounds * steps)
    return {
        "e_bisam_breakdown_ms": breakdown,
        "parameters": int(sum(np.prod(v.shape) for v in inner.trainable_variables)),
        "step_ms": step_ms,
        "images_per_s": {m: 1000 * args.batch_size / t for m, t in step_ms.items()},
        "epoch_s_estimate": {m: t * steps_per_epoch / 1000 for m, t in step_ms.items()},
        "peak_memory_mb": peak_mb,
        "cpu_memory_proxy": cpu_proxy,
        "ratios": ratios,
        "max_rss_mb_after_timing_process": max_rss_mb(),
    }


LABELS = {
    "sgd": "SGD",
    "sam": "SAM",
    "bisam_neglog": "BiSAM (-log)",
    "bisam_tanh": "BiSAM (tanh)",
    "a_bisam": "A-BiSAM",
    "e_bisam": "E-BiSAM",
}


def plot(result, path):
    """A bar chart of the median step time per model (groups) and method (bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["models"])
    width = 0.8 / len(METHODS)
    fig, ax = plt.subplots(figsize=(2.2 + 1.6 * len(names), 3.6))
    for i, method in enumerate(METHODS):
        values = [result["models"][n]["step_ms"][method] for n in names]
        positions = [j + (i - (len(METHODS) - 1) / 2) * width for j in range(len(names))]
        ax.bar(positions, values, width, label=LABELS[method])
    config = result["config"]
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("ms per train step (median)")
    ax.set_title(
        f"Batch {config['batch_size']}, {config['device']}, {config['machine']}"
        + (", XLA" if config["jit_compile"] else "")
        + (", mixed_float16" if config["mixed_precision"] else ""),
        fontsize=9,
    )
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="resnet20 and resnet56, few steps (CPU, minutes)"
    )
    parser.add_argument("--models", nargs="+", default=None, help="model names for bk.models.build")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per method")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds")
    parser.add_argument("--steps", type=int, default=None, help="steps per round and method")
    parser.add_argument(
        "--jit-compile",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="compile the whole train step with XLA",
    )
    parser.add_argument(
        "--mixed-precision",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="train under the mixed_float16 policy (GPU)",
    )
    parser.add_argument(
        "--cpu-memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="on a CPU, measure SAM's and BiSAM's peak RSS in child processes",
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also time the passes an E-BiSAM step is made of (see above)",
    )
    parser.add_argument("--memory-probe", nargs=2, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=str, default=None, help="write the results here")
    parser.add_argument("--plot", type=str, default=None, help="write a bar chart (PNG) here")
    args = parser.parse_args(argv)
    model_names = args.models or (QUICK_MODELS if args.quick else MODELS)
    rounds = args.rounds or (2 if args.quick else 5)
    steps = args.steps or (2 if args.quick else 10)
    args.warmup = args.warmup or (2 if args.quick else 5)
    if args.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")

    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(args.batch_size, 32, 32, 3)).astype("float32"))
    y = tf.constant(rng.integers(0, args.num_classes, size=(args.batch_size,)))
    if args.memory_probe:
        print(json.dumps(memory_probe(*args.memory_probe, args, x, y)))
        return None
    device = memory_device()
    results = {}
    for name in model_names:
        results[name] = bench_model(name, args, x, y, rounds, steps, device)
        keras.backend.clear_session()
        row = results[name]
        print(f"{name} ({row['parameters']:,} parameters)")
        for method in METHODS:
            print(
                f"  {method:>13}: {row['step_ms'][method]:8.1f} ms/step "
                f"{row['images_per_s'][method]:7.1f} img/s"
            )
        if device.startswith("GPU"):
            peaks = {m: f"{row['peak_memory_mb'][m]:.0f}" for m in ("sam", "bisam_neglog")}
            print(f"  peak GPU memory (MiB): {peaks}")
        elif row["cpu_memory_proxy"]:
            print(f"  CPU proxy, peak RSS (MiB): {row['cpu_memory_proxy']}")
        for ratio, value in row["ratios"].items():
            print(f"  {ratio:>22}: {value:.3f}")
        if row["e_bisam_breakdown_ms"]:
            for clock, values in row["e_bisam_breakdown_ms"].items():
                print(
                    f"  E-BiSAM passes ({clock}): "
                    + ", ".join(f"{name} {value:.3g}" for name, value in values.items())
                )
    result = {
        "models": results,
        "config": {
            "models": list(model_names),
            "methods": list(METHODS),
            "batch_size": args.batch_size,
            "warmup": args.warmup,
            "rounds": rounds,
            "steps_per_round": steps,
            "jit_compile": args.jit_compile,
            "mixed_precision": args.mixed_precision,
            "rho": 0.05,
            "memory": (
                "tf.config.experimental.get_memory_info('GPU:0')['peak'] over one step"
                if device.startswith("GPU")
                else "CPU proxy: peak RSS (VmHWM) over 2 steps after warm-up, in a child "
                "process per method; lifetime_max_rss_mb from resource.getrusage"
            ),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "load_average_1_5_15_min_at_end": os.getloadavg(),
            "device": device,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
        },
    }
    result["machine"] = machine.record()
    print(machine.describe(result["machine"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    if args.plot:
        plot(result, args.plot)
    return result


if __name__ == "__main__":
    main()
