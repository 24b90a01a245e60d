"""Each `RunConfig` setting is declared once (`config.setting`): the command
line's flags, the presets, `config.json` and the `--resume` check follow it."""

import argparse
import dataclasses
import json
import os

import pytest

from bisam_keras import cli
from bisam_keras.experiments import PRESETS, config, method_names, methods, presets

# Preset keys that are not a field (or a field that `make_configs` sets by the
# method or the dataset): the run length, `rho` and `mu` by method, the default model.
PRESET_ONLY = ("sgd_epochs", "adaptive_rho", "mu_by_dataset", "model", "epochs", "steps")
PRESET_BY_METHOD = ("rho", "mu")


def test_every_preset_key_is_a_declared_setting():
    declared = config.settings("preset")
    for name, preset in PRESETS.items():
        for key in preset:
            assert key in declared or key in PRESET_ONLY + PRESET_BY_METHOD, (name, key)
    fields = {f.name for f in dataclasses.fields(config.RunConfig)}
    assert set(declared) <= fields
    assert set(PRESET_BY_METHOD) <= fields and not set(PRESET_BY_METHOD) & set(declared)


def test_every_flag_setting_has_its_flag_and_no_other_field_is_read_from_flags():
    parser = cli.build_parser()
    dests = set()
    for command in ("train", "compare"):
        sub = parser._subparsers._group_actions[0].choices[command]
        dests |= {action.dest for action in sub._actions}
    for name in config.settings("flag"):
        assert name in dests or f"{name}s" in dests, name
    assert cli.RUN_FLAGS == config.settings("flag")
    # The fields with a flag that make_configs sets itself, and those without one.
    fields = {f.name for f in dataclasses.fields(config.RunConfig)}
    own = {"seed", "output", "jit_compile", "strategy", "sync_perturbation", "verbose"}
    no_flag = {"optimizer", "warmup_steps", "global_clipnorm", "swp_probability", "sds_fraction"}
    assert fields - set(config.settings("flag")) == own | no_flag


def test_the_method_names_are_declared_once():
    assert methods.METHODS is method_names.METHODS and cli.METHODS is method_names.METHODS
    assert set(method_names.LABELS) == set(method_names.METHODS)
    assert config.RESUMABLE_CHANGES == (
        "data_dir",
        "tfds_dir",
        "output",
        "jit_compile",
        "verbose",
        "verify",
    )


def _with_a_new_setting(**kinds):
    """`RunConfig` with one more field, declared as any setting is."""
    return dataclasses.make_dataclass(
        "DummyConfig",
        [("dummy", float, config.setting(1.0, **kinds))],
        bases=(config.RunConfig,),
    )


def test_a_new_setting_reaches_the_flags_the_presets_config_json_and_resume(tmp_path, monkeypatch):
    dummy = _with_a_new_setting(flag=True, preset=True)
    assert "dummy" in config.settings("flag", dummy)
    assert "dummy" in config.settings("preset", dummy)
    assert "dummy" not in config.settings("resumable", dummy)
    parser = cli.build_parser()
    args = parser.parse_args(["train", "--preset", "paper-cifar", "--method", "sam"])
    monkeypatch.setitem(PRESETS, "paper-cifar", {**PRESETS["paper-cifar"], "dummy": 2.0})
    (from_preset,) = cli.make_configs(args, config_class=dummy)
    assert from_preset.dummy == 2.0
    flagged = argparse.Namespace(**vars(args), dummy=3.0)
    (from_flag,) = cli.make_configs(flagged, config_class=dummy)
    assert from_flag.dummy == 3.0
    recorded = config.recorded_config(from_flag)
    assert json.loads(json.dumps(recorded))["dummy"] == 3.0  # config.json
    differences = config.config_differences(recorded, from_preset)
    assert differences == [("dummy", 3.0, 2.0)]
    older = {k: v for k, v in recorded.items() if k != "dummy"}  # saved before the field
    assert config.config_differences(older, from_flag) == [("dummy", 1.0, 3.0)]
    loose = _with_a_new_setting(resumable=True)
    a, b = loose(dummy=1.0), loose(dummy=5.0)
    assert config.config_differences(config.recorded_config(a), b) == []
    assert "dummy" in config.settings("resumable", loose)
    assert os.path.basename(a.run_dir()) == "seed0"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_set_only_settings(name):
    assert presets.PRESETS[name] is PRESETS[name]
    unknown = set(PRESETS[name]) - set(config.settings("preset")) - set(PRESET_ONLY)
    assert unknown <= set(PRESET_BY_METHOD)
