"""The benchmark scripts run end to end and write the JSON they promise.

Each runs in a fresh process: `scaling.py` must configure logical CPU devices
before TensorFlow starts, and this test session has already started it (see
`conftest.py`). The sizes are tiny; only the keys and that every timing is a
positive finite number are checked, not the timings themselves.
"""

import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHON": sys.executable}


def run(command, timeout):
    process = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=ENV)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    return process


def assert_positive_numbers(tree):
    """Every number in `tree` (nested dicts) is finite and > 0; returns how many."""
    if isinstance(tree, dict):
        return sum(assert_positive_numbers(value) for value in tree.values())
    assert isinstance(tree, float) and math.isfinite(tree) and tree > 0, tree
    return 1


MACHINE_KEYS = {
    "cpu_model",
    "cores",
    "vector_isa",
    "avx2",
    "avx512",
    "amx",
    "onednn_max_cpu_isa",
    "effective_isa",
    "emulated",
    "onednn",
    "tf_enable_onednn_opts",
    "tf_intra_op_threads",
    "tf_inter_op_threads",
    "tensorflow",
    "keras",
}


def check_machine(record, torch_used=False):
    """The `"machine"` record every benchmark JSON carries (bisam_keras/testing/machine.py)."""
    assert MACHINE_KEYS <= set(record), MACHINE_KEYS - set(record)
    assert isinstance(record["cpu_model"], str) and record["cpu_model"]
    assert isinstance(record["onednn"], bool) and record["cores"] >= 1
    assert record["tf_intra_op_threads"] >= 0 and record["tf_inter_op_threads"] >= 0
    if platform.machine() == "x86_64":
        assert record["vector_isa"] in ("AVX", "AVX2", "AVX-512", "AMX")
    # The scripts import bisam_keras before TensorFlow: oneDNN on unless the user chose.
    setting = ENV.get("TF_ENABLE_ONEDNN_OPTS")
    if setting is None and platform.machine() == "x86_64":
        assert record["tf_enable_onednn_opts"] == "1" and record["onednn"] is True
    elif setting == "0":
        assert record["onednn"] is False
    if torch_used:
        assert {"torch", "torch_threads", "torch_cpu_capability"} <= set(record)


def check_loss_overhead(result):
    check_machine(result["machine"])
    methods = {"ce_keras", "ce_tf", "neglog", "tanh"}
    assert set(result["seconds"]) == methods
    for modes in result["seconds"].values():
        assert set(modes) == {"eager", "function", "xla"}
        assert set(modes["eager"]) == {"per_call"}
        assert set(modes["function"]) == set(modes["xla"]) == {"per_call", "looped"}
    assert assert_positive_numbers(result["seconds"]) == 4 * 5
    assert assert_positive_numbers(result["ratios"]) == 4 * 5
    assert set(result["ratios"]["xla"]["looped"]) == {
        "neglog/ce_keras",
        "neglog/ce_tf",
        "tanh/ce_keras",
        "tanh/ce_tf",
    }
    assert isinstance(result["target"]["met"], bool)


def check_scaling(result, methods, devices):
    check_machine(result["machine"])
    assert set(result["results"]) == set(methods)
    for rows in result["results"].values():
        assert set(rows) == {str(n) for n in devices}
        for row in rows.values():
            assert set(row) == {"step_ms", "images_per_s", "efficiency"}
            assert_positive_numbers(row)
        # The baseline's efficiency is its own time over itself: 1 up to a float64 division.
        assert rows[str(min(devices))]["efficiency"] == pytest.approx(1.0)
    assert result["config"]["device_kind"] in ("CPU", "GPU")
    if result["config"]["device_kind"] == "CPU":
        assert "share the same physical cores" in result["note"]


@pytest.mark.slow
def test_loss_overhead_writes_every_mode_and_ratio(tmp_path):
    path = tmp_path / "loss.json"
    script = BENCHMARKS / "loss_overhead.py"
    process = run([sys.executable, script, "--repetitions", "5", "--json", path], timeout=240)
    assert "target" in process.stdout
    result = json.loads(path.read_text())
    check_loss_overhead(result)
    assert result["config"]["repetitions"] == 5 and result["config"]["trials"] == 3


@pytest.mark.slow
def test_scaling_on_two_logical_cpus(tmp_path):
    path = tmp_path / "scaling.json"
    args = ["--devices", "1", "2", "--batch-per-replica", "4", "--methods", "sam"]
    args += ["--rounds", "1", "--steps", "2", "--warmup", "1", "--json", path]
    process = run([sys.executable, BENCHMARKS / "scaling.py", *args], timeout=240)
    result = json.loads(path.read_text())
    check_scaling(result, ["sam"], [1, 2])
    assert result["config"]["batch_per_replica"] == 4
    if result["config"]["device_kind"] == "CPU":
        assert "NOTE: logical CPU devices share the same physical cores" in process.stdout


@pytest.mark.slow
def test_gpu_check_dry_run_prints_one_json_summary(tmp_path):
    process = subprocess.run(  # not run(): the summary must be printed even on failure
        ["bash", BENCHMARKS / "gpu_check.sh", "--dry-run"],
        capture_output=True,
        text=True,
        timeout=420,
        env={**ENV, "OUT": str(tmp_path)},
    )
    summary = json.loads(process.stdout.strip().splitlines()[-1])
    assert process.returncode == 0 and summary["ok"], process.stderr[-3000:]
    assert summary["dry_run"] is True and summary["failed"] == []
    parts = summary["parts"]
    assert set(parts) == {"mixed_precision", "epoch_time", "mirrored", "loss_overhead"}
    for part in parts.values():
        assert part["exit_status"] == 0 and part["seconds"] >= 0

    mixed = parts["mixed_precision"]["result"]
    assert mixed["policy"] == "mixed_float16" and mixed["jit_compile"]
    assert mixed["loss_scale_optimizer"] and mixed["loss_finite"]
    assert_positive_numbers({k: mixed[k] for k in ("loss", "dynamic_scale", "step_ms")})

    epoch = parts["epoch_time"]["result"]
    assert {"sgd", "sam", "bisam_neglog"} <= set(epoch["epoch_s_estimate"])
    check_machine(epoch["machine"])
    assert epoch["steps_per_epoch"] == math.ceil(50_000 / epoch["config"]["batch_size"])
    assert_positive_numbers(epoch["epoch_s_estimate"])

    check_scaling(parts["mirrored"]["result"], ["bisam_neglog"], [1, 2])
    check_loss_overhead(parts["loss_overhead"]["result"])
    assert (tmp_path / "gpu_check" / "summary.json").exists()
    check_machine(mixed["machine"])
    check_machine(summary["machine"])


@pytest.mark.slow
def test_epoch_time_tiny_run_writes_every_method(tmp_path):
    path = tmp_path / "epoch.json"
    args = ["--models", "resnet20", "--batch-size", "8", "--warmup", "1", "--rounds", "1"]
    args += ["--steps", "1", "--no-cpu-memory", "--json", path]
    run([sys.executable, BENCHMARKS / "epoch_time.py", *args], timeout=300)
    result = json.loads(path.read_text())
    check_machine(result["machine"])
    row = result["models"]["resnet20"]
    assert row["parameters"] == 272_474
    assert set(row["step_ms"]) == set(result["config"]["methods"])
    assert {"sgd", "sam", "bisam_neglog", "bisam_tanh"} <= set(row["step_ms"])
    assert_positive_numbers(row["step_ms"])
    assert_positive_numbers(row["ratios"])


@pytest.mark.slow
def test_step_time_tiny_run_records_the_machine(tmp_path):
    path = tmp_path / "step.json"
    args = ["--batch-size", "8", "--rounds", "1", "--steps", "1", "--json", path]
    process = run([sys.executable, BENCHMARKS / "step_time.py", *args], timeout=300)
    result = json.loads(path.read_text())
    check_machine(result["machine"])
    assert "Machine: " in process.stdout and "oneDNN" in process.stdout
    assert_positive_numbers(result["step_ms"])


@pytest.mark.slow
def test_pipeline_speed_tiny_run_records_the_machine(tmp_path):
    path = tmp_path / "pipeline.json"
    args = ["--quick", "--data-dir", str(tmp_path / "absent"), "--batch-size", "32"]
    process = run([sys.executable, BENCHMARKS / "pipeline_speed.py", *args, "--json", path], 300)
    result = json.loads(path.read_text())
    check_machine(result["machine"])
    assert result["results"]["source"] == "synthetic" and "Machine: " in process.stdout


def _optional_extra_or_hint(module, command, timeout):
    """Runs `command`; without `module` installed it must print the install hint and exit 0."""
    process = run(command, timeout)
    if importlib.util.find_spec(module) is None:
        assert "pip install" in process.stdout and "Skipping" in process.stdout
        return None
    return process


@pytest.mark.slow
def test_vs_pytorch_tiny_run_or_install_hint(tmp_path):
    path = tmp_path / "vs.json"
    args = ["--models", "resnet20", "--batch-size", "8", "--warmup", "1", "--rounds", "1"]
    args += ["--steps", "1", "--threads", "1", "--json", path]
    if _optional_extra_or_hint("torch", [sys.executable, BENCHMARKS / "vs_pytorch.py", *args], 300):
        result = json.loads(path.read_text())
        # |mean Q (Keras) - mean Q (PyTorch)| over 64 rows, 10 classes, logits N(0, 9), both
        # float32 (`vs_pytorch.check_lower_bound`). Per row, each is within
        # (gamma(10) + 3 U_FUNC) (1 + |Q_i|) ~ 2e-6 (1 + |Q_i|) of Q_i (tests/tolerances.py),
        # and each mean adds gamma(64) mean|Q| ~ 4e-6 mean|Q|. With |Q_i| <~ 10 (-log bound, mu
        # 1.5): < 2 (2e-6 * 11 + 4e-6 * 10) ~ 1.2e-4 worst case. A wrong bound is off by > 1e-2.
        assert result["lower_bound_abs_difference"] < 1.2e-4
        check_machine(result["machine"], torch_used=True)
        assert result["machine"]["torch_threads"] == 1
        assert_positive_numbers(result["models"]["resnet20"]["ratios"])


def _tiny_profile(tmp_path, method):
    """A 1-step `profile_step.py` run's JSON, or None where xprof is missing (hint checked)."""
    path = tmp_path / "profile.json"
    args = ["--model", "resnet20", "--method", method, "--batch-size", "8", "--warmup", "1"]
    args += ["--steps", "1", "--json", path]
    script = [sys.executable, BENCHMARKS / "profile_step.py", *args]
    if _optional_extra_or_hint("xprof", script, 300):
        return json.loads(path.read_text())
    return None


@pytest.mark.slow
def test_profile_step_tiny_run_or_install_hint(tmp_path):
    result = _tiny_profile(tmp_path, "bisam")
    if result is not None:
        check_machine(result["machine"])
        keras_profile = result["results"]["keras"]
        assert keras_profile["busy_ms_per_step"] > 0
        assert sum(keras_profile["share"].values()) == pytest.approx(1.0)
        # Every train step convolves forward and backward, and normalizes.
        assert {"conv forward", "conv backward", "batch norm"} <= set(keras_profile["share"])


@pytest.mark.slow
def test_profile_step_e_bisam_against_bisam(tmp_path):
    result = _tiny_profile(tmp_path, "e-bisam")
    if result is not None:
        assert set(result["results"]) == {"e-bisam", "bisam"}
        # E-BiSAM selects examples (top-k) and masks the perturbation (random numbers).
        assert result["results"]["e-bisam"]["ms_per_step"].get("selection", 0.0) > 0


@pytest.mark.parametrize(
    "op,kind",
    [
        ("_MklNativeConv2DBackpropFilter", "conv backward"),
        ("aten::convolution_backward", "conv backward"),
        ("_MklNativeConv2D", "conv forward"),
        ("aten::mkldnn_convolution", "conv forward"),
        ("_MklNativeFusedBatchNormGradV3", "batch norm"),
        ("aten::native_batch_norm", "batch norm"),
        ("ReluGrad", "elementwise"),
        ("aten::clamp_min", "elementwise"),
        ("SparseSoftmaxCrossEntropyWithLogits", "loss"),
        ("AssignVariableOp", "optimizer"),
        ("aten::add_", "optimizer"),
        ("aten::copy_", "other"),
        ("TopKV2", "selection"),
        ("StatelessRandomUniformV2", "selection"),
    ],
)
def test_profile_kinds(op, kind):
    from bisam_keras.testing import benchmark_script

    assert benchmark_script("profile_step").kind_of(op) == kind


def _machine_module():
    from bisam_keras.testing import machine

    return machine


@pytest.mark.parametrize(
    "flags,isa",
    [
        ({"sse4_1", "avx"}, "AVX"),
        ({"sse4_1", "avx", "avx2", "fma"}, "AVX2"),  # AMD EPYC Rome/Milan, Intel Haswell
        ({"avx", "avx2", "avx512f", "avx512_vnni"}, "AVX-512"),
        ({"avx2", "avx512f", "amx_tile", "amx_bf16"}, "AMX"),  # Intel Sapphire Rapids
        (set(), None),
    ],
)
def test_vector_isa(flags, isa):
    assert _machine_module().vector_isa(flags) == isa


@pytest.mark.parametrize(
    "cap,cpu,effective",
    [
        ("AVX2", "AVX-512", "AVX2"),  # emulating an AVX2 CPU on an AVX-512 one
        ("avx2_vnni", "AVX-512", "AVX2"),
        ("AVX512_CORE_VNNI", "AVX2", "AVX2"),  # a cap above the CPU changes nothing
        ("AVX512_CORE_AMX", "AMX", "AMX"),
        ("ALL", "AVX-512", "AVX-512"),
        (None, "AVX2", "AVX2"),
    ],
)
def test_effective_isa_under_onednn_cap(cap, cpu, effective):
    machine = _machine_module()
    assert machine.effective_isa(cpu, machine.isa_cap(cap)) == effective


def test_cpu_info_reads_the_first_cpu(tmp_path):
    path = tmp_path / "cpuinfo"
    block = "processor\t: {n}\nmodel name\t: Example CPU {n}\nflags\t\t: fpu avx avx2\n\n"
    path.write_text(block.format(n=0) + block.format(n=1).replace("avx2", "avx512f"))
    assert _machine_module().cpu_info(str(path)) == ("Example CPU 0", {"fpu", "avx", "avx2"})
