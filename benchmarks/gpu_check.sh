#!/usr/bin/env bash
# One prepared check of bisam-keras on a single-GPU machine, in under 8 minutes.
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine
#   bash benchmarks/gpu_check.sh --dry-run  # the same code paths with tiny sizes, on CPU
#
# Parts, each a Python process under its own timeout, each writing one JSON file:
#   mixed_precision  a BiSAM step under XLA and mixed_float16: the loss is finite and
#                    Keras wrapped the optimizer in a LossScaleOptimizer (needs a GPU
#                    unless --dry-run)
#   epoch_time       benchmarks/step_time.py on ResNet-56, batch 128: SGD, SAM and BiSAM
#                    step times, times the 391 steps of a CIFAR-10 epoch (50,000 / 128)
#   mirrored         benchmarks/scaling.py: MirroredStrategy over the visible GPUs
#   loss_overhead    benchmarks/loss_overhead.py --quick
#
# The files go to $OUT/gpu_check (a mktemp folder when OUT is unset). The last line of
# stdout is one JSON summary of every part; the exit status is non-zero when any part
# failed, after the summary is printed. Set EPOCH_JIT=1 to time the epoch under XLA
# (slower to compile: ResNet-56 with four optimizers may not fit the 8 minutes).
set -uo pipefail

DRY_RUN=0
case "${1:-}" in
  --dry-run) DRY_RUN=1 ;;
  "") ;;
  *) echo "usage: $0 [--dry-run]" >&2; exit 2 ;;
esac

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WORK="${OUT:-$(mktemp -d)}/gpu_check"
mkdir -p "$WORK"
PYTHON="${PYTHON:-python}"
export TF_CPP_MIN_LOG_LEVEL=2

# Sizes and per-part timeouts (seconds). The timeouts add up to 450 s on the GPU.
if (( DRY_RUN )); then
  export CUDA_VISIBLE_DEVICES=""  # the CPU code paths, even on a GPU machine
  MP_ARGS=(resnet20 8 2 no-gpu-needed);        MP_LIMIT=150
  EPOCH_MODEL=resnet20; EPOCH_BATCH=8; EPOCH_ARGS=(--rounds 1 --steps 1); EPOCH_LIMIT=150
  MIRRORED_ARGS=(--devices 1 2 --batch-per-replica 4 --rounds 1 --steps 1 --warmup 1
                 --methods bisam_neglog);      MIRRORED_LIMIT=120
  LOSS_ARGS=(--repetitions 10 --trials 1);     LOSS_LIMIT=120
else
  MP_ARGS=(resnet20 128 5 gpu-needed);         MP_LIMIT=100
  EPOCH_MODEL=resnet56; EPOCH_BATCH=128; EPOCH_ARGS=(--rounds 2 --steps 10); EPOCH_LIMIT=165
  MIRRORED_ARGS=(--quick);                     MIRRORED_LIMIT=95
  LOSS_ARGS=(--quick);                         LOSS_LIMIT=90
fi
if [[ "${EPOCH_JIT:-0}" == 1 ]]; then EPOCH_ARGS+=(--jit-compile); fi

FAILED=()
# run_part NAME LIMIT COMMAND...: runs COMMAND under a timeout, its output in NAME.log,
# and records its exit status and seconds in NAME.status.
run_part() {
  local name=$1 limit=$2 start=$SECONDS rc
  shift 2
  echo "== $name (timeout ${limit}s)" >&2
  timeout --kill-after=10 "$limit" "$@" >"$WORK/$name.log" 2>&1
  rc=$?
  echo "$rc $((SECONDS - start))" >"$WORK/$name.status"
  if (( rc != 0 )); then
    FAILED+=("$name")
    echo "FAILED: $name (exit status $rc; 124 is the timeout). Last lines of its log:" >&2
    tail -n 25 "$WORK/$name.log" >&2
  fi
}

run_part mixed_precision "$MP_LIMIT" "$PYTHON" - "$WORK/mixed_precision.json" "${MP_ARGS[@]}" <<'PY'
import json, math, os, statistics, sys, time

from bisam_keras.testing import machine  # first: sets TensorFlow's CPU defaults
import keras
import numpy as np
import tensorflow as tf

import bisam_keras as bk
from bisam_keras.models import cifar_resnet

path, model_name, batch, steps, need_gpu = sys.argv[1:]
batch, steps = int(batch), int(steps)
gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
keras.mixed_precision.set_global_policy("mixed_float16")
keras.utils.set_random_seed(0)
model = bk.SharpnessAwareModel(cifar_resnet(model_name, num_classes=10))
model.compile(
    optimizer=bk.BiSAM(keras.optimizers.SGD(0.01, momentum=0.9), rho=0.05),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    jit_compile=True,
)
rng = np.random.default_rng(0)
x = rng.normal(size=(batch, 32, 32, 3)).astype("float32")
y = rng.integers(0, 10, size=(batch,))
times, logs = [], []
for _ in range(1 + steps):  # the first step compiles
    start = time.perf_counter()
    logs.append(model.train_on_batch(x, y, return_dict=True))
    times.append(time.perf_counter() - start)
losses = [float(v) for log in logs for k, v in log.items() if k in ("loss", "perturbed_loss")]
result = {
    "gpus": gpus,
    "model": model_name,
    "batch_size": batch,
    "policy": keras.mixed_precision.global_policy().name,
    "jit_compile": bool(model.jit_compile),
    "loss_scale_optimizer": isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer),
    "dynamic_scale": float(model.optimizer.dynamic_scale.numpy()),
    "loss": logs[-1]["loss"],
    "perturbed_loss": logs[-1]["perturbed_loss"],
    "loss_finite": all(math.isfinite(v) for v in losses),
    "first_step_s": times[0],
    "step_ms": 1000 * statistics.median(times[1:]),
}
result["machine"] = machine.record()
result["ok"] = (
    result["jit_compile"]
    and result["loss_scale_optimizer"]
    and result["loss_finite"]
    and (bool(gpus) or need_gpu != "gpu-needed")
)
with open(path, "w") as f:
    json.dump(result, f, indent=2)
print(json.dumps(result))
sys.exit(0 if result["ok"] else 1)
PY

run_part epoch_time "$EPOCH_LIMIT" "$PYTHON" "$HERE/step_time.py" --model "$EPOCH_MODEL" \
  --batch-size "$EPOCH_BATCH" "${EPOCH_ARGS[@]}" --json "$WORK/epoch_time.json"

run_part mirrored "$MIRRORED_LIMIT" "$PYTHON" "$HERE/scaling.py" "${MIRRORED_ARGS[@]}" \
  --json "$WORK/mirrored.json"

run_part loss_overhead "$LOSS_LIMIT" "$PYTHON" "$HERE/loss_overhead.py" "${LOSS_ARGS[@]}" \
  --json "$WORK/loss_overhead.json"

"$PYTHON" - "$WORK" "$DRY_RUN" "$EPOCH_BATCH" "${FAILED[@]}" <<'PY'
import json, math, os, sys

work, dry_run, epoch_batch, *failed = sys.argv[1:]
parts = {}
for name in ("mixed_precision", "epoch_time", "mirrored", "loss_overhead"):
    part = {"ok": name not in failed, "exit_status": None, "seconds": None, "result": None}
    try:
        with open(os.path.join(work, f"{name}.status")) as f:
            part["exit_status"], part["seconds"] = map(int, f.read().split())
        with open(os.path.join(work, f"{name}.json")) as f:
            part["result"] = json.load(f)
    except (OSError, ValueError) as error:
        part["ok"], part["error"] = False, f"{type(error).__name__}: {error}"
    parts[name] = part
epoch = parts["epoch_time"]["result"]
if epoch is not None:
    steps_per_epoch = math.ceil(50_000 / int(epoch_batch))
    epoch["steps_per_epoch"] = steps_per_epoch
    epoch["epoch_s_estimate"] = {
        method: ms * steps_per_epoch / 1000 for method, ms in epoch["step_ms"].items()
    }
summary = {
    "ok": all(part["ok"] for part in parts.values()),
    "dry_run": dry_run == "1",
    "failed": [name for name, part in parts.items() if not part["ok"]],
    "work_dir": work,
    "parts": parts,
    "machine": next((p["result"]["machine"] for p in parts.values()
                     if isinstance(p["result"], dict) and "machine" in p["result"]), None),
}
with open(os.path.join(work, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
print(json.dumps(summary))
sys.exit(0 if summary["ok"] else 10)
PY
rc=$?
if (( rc != 0 && rc != 10 )); then  # the summary itself broke: still end with one JSON line
  echo "{\"ok\": false, \"failed\": [\"summary\"], \"work_dir\": \"$WORK\"}"
fi
exit $(( rc != 0 ))
