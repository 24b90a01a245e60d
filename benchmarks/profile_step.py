"""Where a train step's time goes: TensorFlow's profiler against PyTorch's, by op kind.

Profiles a few train steps of one model and method (after a warm-up) with
`tf.profiler` (read back with xprof's `framework_op_stats`) and, when PyTorch
is installed, the same step of `benchmarks/torch_sam.py` with
`torch.profiler`. Op self-times are grouped into kinds (convolution forward,
convolution backward (input and filter), BatchNorm, elementwise, loss, optimizer, other) and
reported in ms per step and as shares of the busy time, so the two frameworks
can be compared kind by kind. Idle time of the thread pools is left out.

    pip install -e ".[bench]"      # xprof (TensorFlow's profile reader) and PyTorch
    python benchmarks/profile_step.py --model resnet56 --method bisam --json profile.json
    python benchmarks/profile_step.py --model resnet20 --method e-bisam   # E-BiSAM against BiSAM

`--method e-bisam` profiles E-BiSAM (`swp_probability = sds_fraction = 0.5`)
against BiSAM, both in Keras (PyTorch has no E-BiSAM here), so that the table
shows where E-BiSAM's step spends what it does not save; its extra ops (the
top-k selection and the SWP mask's random numbers) are the kind "selection".

Without xprof the script says how to install it and exits with code 0;
without PyTorch it profiles TensorFlow alone.
"""

import argparse
import collections
import glob
import importlib.util
import json
import os
import re
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

INSTALL_HINT = (
    'profile_step.py needs xprof to read TensorFlow profiles: pip install -e ".[bench]" '
    "(or pip install xprof). Skipping."
)

# (kind, pattern on the op type / name); the first match wins.
KINDS = (
    ("conv backward", r"Conv2DBackprop|convolution_backward"),
    ("conv forward", r"Conv2D|mkldnn_convolution|aten::convolution$|conv2d"),
    ("batch norm", r"BatchNorm|batch_norm"),
    ("selection", r"TopK|StatelessRandomUniform|RandomUniform|bernoulli"),
    ("loss", r"Softmax|softmax|nll_loss|cross_entropy|Softplus|aten::exp|aten::log|^Exp$|^Log$"),
    ("optimizer", r"Apply|AssignVariable|AssignAdd|Optimizer|aten::add_$|_foreach|aten::mul_$"),
    (
        "elementwise",
        r"Relu|relu|threshold|clamp_min|^Mul$|^AddV2$|^AddN$|^Sub$|^Sum$|^Tile$|aten::add$|"
        r"aten::mul$|aten::sum$",
    ),
)


def kind_of(name):
    for kind, pattern in KINDS:
        if re.search(pattern, name):
            return kind
    return "other"


def summarize(self_us_by_op, steps):
    """`{kind: ms per step}` and `{kind: share of busy time}` from op self-times (us)."""
    by_kind = collections.Counter()
    for op, us in self_us_by_op.items():
        by_kind[kind_of(op)] += us
    busy = sum(by_kind.values())
    ms = {kind: by_kind[kind] / steps / 1e3 for kind, _ in by_kind.most_common()}
    share = {kind: by_kind[kind] / busy for kind in ms}
    return {"busy_ms_per_step": busy / steps / 1e3, "ms_per_step": ms, "share": share}


def build_inputs(batch_size):
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch_size, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, size=(batch_size,))
    return x, y


def profile_keras(model_name, method, x, y, warmup, steps, jit_compile):
    import tensorflow as tf
    from vs_pytorch import keras_step  # a sibling: benchmarks/ is this script's folder
    from xprof.convert import raw_to_tool_data

    step, _ = keras_step(method, model_name, x, y, jit_compile)
    for _ in range(warmup):
        step()
    logdir = tempfile.mkdtemp(prefix="profile_step_")
    tf.profiler.experimental.start(logdir)
    for _ in range(steps):
        step()
    tf.profiler.experimental.stop()
    path = sorted(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True))[-1]
    data, _ = raw_to_tool_data.xspace_to_tool_data([path], "framework_op_stats", {})
    table = json.loads(data)[0]
    columns = [c["id"] for c in table["cols"]]
    self_us = collections.Counter()
    for row in table["rows"]:
        record = dict(zip(columns, (cell.get("v") for cell in row["c"])))
        if record["type"] != "IDLE":
            self_us[record["type"]] += record["total_self_time"]
    return summarize(self_us, steps)


def profile_torch(model_name, method, x, y, warmup, steps):
    import torch
    from vs_pytorch import torch_step  # a sibling: benchmarks/ is this script's folder

    step, _ = torch_step(method, model_name, x, y, channels_last=False)
    for _ in range(warmup):
        step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    self_us = collections.Counter()
    for event in prof.key_averages():
        self_us[event.key] += event.self_cpu_time_total
    return summarize(self_us, steps)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet56", help="resnet20 ... resnet110")
    parser.add_argument("--method", default="bisam", choices=("sgd", "sam", "bisam", "e-bisam"))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads, both")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="profiled steps")
    parser.add_argument("--jit-compile", action="store_true", help="the Keras step under XLA")
    parser.add_argument("--json", type=str, default=None, help="write the results here")
    args = parser.parse_args(argv)
    if importlib.util.find_spec("xprof") is None:
        print(INSTALL_HINT)
        return 0
    from bisam_keras.testing import machine  # first: sets TensorFlow's CPU defaults

    has_torch = importlib.util.find_spec("torch") is not None
    if has_torch:
        from vs_pytorch import configure_threads

        configure_threads(args.threads)
    else:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    x, y = build_inputs(args.batch_size)
    if args.method == "e-bisam":
        results = {
            method: profile_keras(
                args.model, method, x, y, args.warmup, args.steps, args.jit_compile
            )
            for method in ("e-bisam", "bisam")
        }
    else:
        results = {
            "keras": profile_keras(
                args.model, args.method, x, y, args.warmup, args.steps, args.jit_compile
            )
        }
        if has_torch:
            results["torch"] = profile_torch(args.model, args.method, x, y, args.warmup, args.steps)
    kinds = list(dict.fromkeys(k for r in results.values() for k in r["ms_per_step"]))
    header = "".join(f"{name + ' ms':>14}{'share':>8}" for name in results)
    record = machine.record()
    print(machine.describe(record))
    print(f"{args.model}, {args.method}, batch {args.batch_size}, {args.threads} threads")
    print(f"{'kind':>22}{header}")
    for kind in kinds:
        cells = "".join(
            f"{r['ms_per_step'].get(kind, 0.0):14.1f}{100 * r['share'].get(kind, 0.0):7.1f}%"
            for r in results.values()
        )
        print(f"{kind:>22}{cells}")
    busy = "".join(f"{r['busy_ms_per_step']:14.1f}{'':>8}" for r in results.values())
    print(f"{'busy total':>22}{busy}")
    if args.json:
        out = {
            "machine": record,
            "results": results,
            "config": {**vars(args), "load_average_end": os.getloadavg()},
        }
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
