"""Every preset's overrides are accepted by the stage they configure.

A misspelt field in :mod:`npga_taichi.presets` would otherwise surface only when ``npga demo``
reaches that stage, minutes into a run.
"""
import inspect
from dataclasses import fields

import pytest

from npga_taichi.avatar.config import AvatarConfig, TrainConfig
from npga_taichi.data.capture import CaptureConfig
from npga_taichi.presets import PRESETS, STAGES, preset_overrides
from npga_taichi.prior.config import PriorTrainConfig
from npga_taichi.prior.distill import DistillConfig
from npga_taichi.prior.tracking import track_capture


def _build(stage: str, overrides: dict):
    if stage == "capture":
        overrides = dict(overrides)
        # CaptureConfig.preset sets attributes by name, so an unknown one would pass silently
        unknown = set(overrides) - {f.name for f in fields(CaptureConfig)} - {"preset"}
        if unknown:
            raise TypeError(f"CaptureConfig has no field(s) {sorted(unknown)}")
        return CaptureConfig.preset(overrides.pop("preset", "default"), **overrides)
    if stage == "prior":
        return PriorTrainConfig(**overrides)
    if stage == "track":
        return inspect.signature(track_capture).bind("data", **overrides)
    if stage == "distill":
        return DistillConfig(**overrides)
    if stage == "avatar":
        return AvatarConfig(**overrides).validate()
    if stage == "train":
        return TrainConfig(**overrides).validate()
    raise AssertionError(stage)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_stage_accepts_its_overrides(name):
    assert set(PRESETS[name]) == set(STAGES)
    demo = preset_overrides(name, "demo")
    assert set(demo) <= set(STAGES) - {"demo"}
    for stage in STAGES[:-1]:
        # the demo's changes go on top of the preset's own (npga_taichi.pipeline.stage_settings)
        _build(stage, {**preset_overrides(name, stage), **demo.get(stage, {})})


def test_a_misspelt_field_is_caught():
    with pytest.raises(TypeError):
        _build("train", {"stepz": 10})
    with pytest.raises(TypeError):
        _build("track", {"steps_frist": 10})
    with pytest.raises(TypeError):
        _build("capture", {"preset": "tiny", "frames_per_sequense": 2})


def test_fit_help_shows_the_default_presets_values():
    """`npga fit --help` states the default preset's value of a field it overrides (G's width is
    64 there, 128 in AvatarConfig), and the dataclass's for the others."""
    from npga_taichi.cli.fit import command

    helps = {p.name: p.help for p in command.params}
    overrides = {**preset_overrides("default", "avatar"), **preset_overrides("default", "train")}
    assert overrides["detail_hidden"] != AvatarConfig().detail_hidden
    for name, value in overrides.items():
        if not isinstance(value, bool):
            assert helps[name].endswith(f"[default: {value}]"), (name, helps[name])
    assert helps["latent_dim"].endswith(f"[default: {AvatarConfig().latent_dim}]")
