"""Gemma 3n's AltUp streams: a residual is (4 streams, batch, seq, hidden); batched conditions
must each patch their own row, every stream, and nothing else."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from patchwork import ModelError
from patchwork.data import containers
from patchwork.loading.model import load_model
from patchwork.patching.patcher import Condition, Patcher
from patchwork.study.specs import ModelSpec

from . import reference


@pytest.fixture(scope="module")
def loaded(checkpoint):
    return load_model(ModelSpec(family="gemma3n", checkpoint=str(checkpoint("gemma3n"))))


def runs(loaded, media: Path) -> tuple[dict, dict]:
    text = loaded.token_ids("what do you hear")
    clean = containers.run_media(
        {"audio": "dog.mkv", "image_features": "dog_features.npy"}, media, 16_000, ""
    )
    conflict = containers.run_media(
        {"audio": "dog_swap.wav", "image_features": "cat_features.npy"}, media, 16_000, ""
    )
    return loaded.adapter.build_inputs(text, clean), loaded.adapter.build_inputs(text, conflict)


def test_the_recorded_residual_keeps_every_stream(loaded, family_root: Path) -> None:
    clean, _ = runs(loaded, family_root / "media")
    _, activations = Patcher(loaded.adapter).record(clean, [(1, "residual"), (1, "mlp")])
    seq = clean["input_ids"].shape[1]
    assert activations[(1, "residual")].shape == (4, seq, 32)
    assert activations[(1, "mlp")].shape == (seq, 32)
    captured = reference.capture(loaded.model, "gemma3n", clean, 2)
    assert torch.equal(activations[(1, "residual")], captured[(1, "residual")])


# 4 rows = as many as the streams: a mask on the wrong axis would broadcast without an error
@pytest.mark.parametrize("groups", [("audio", "image", "text", "answer"), ("image", "all", "text")])
def test_batched_conditions_do_not_leak_across_rows_or_streams(
    loaded, family_root: Path, groups: tuple[str, ...]
) -> None:
    clean, conflict = runs(loaded, family_root / "media")
    patcher = Patcher(loaded.adapter)
    sites = [(layer, "residual") for layer in range(3)]
    _, activations = patcher.record(clean, sites)
    masks = loaded.adapter.position_groups(conflict["input_ids"])
    conditions = [Condition(1, (1, 2), group, "residual") for group in groups]
    batched = patcher.patched(conflict, activations, conditions, masks)
    source = reference.capture(loaded.model, "gemma3n", clean, 3)
    for row, group in enumerate(groups):
        expected = reference.patched(
            loaded.model, "gemma3n", conflict, source, [1, 2], "residual", masks[group]
        )
        assert torch.allclose(batched[row], expected, atol=1e-5), group
    # different groups give different results: rows really are separate conditions
    assert not torch.allclose(batched[0], batched[1], atol=1e-4)


def test_pixel_values_are_refused(loaded, family_root: Path) -> None:
    _, conflict = runs(loaded, family_root / "media")
    with pytest.raises(ModelError, match="needs timm"):
        loaded.adapter.check_inputs({**conflict, "pixel_values": torch.zeros(1)}, "sample dog")


def test_the_check_has_teeth_when_the_stream_axis_is_ignored(
    loaded, family_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the rows taken as axis 0, four conditions broadcast silently over the four streams
    and patch the wrong values: the comparison above would catch it."""
    clean, conflict = runs(loaded, family_root / "media")
    patcher = Patcher(loaded.adapter)
    _, activations = patcher.record(clean, [(1, "residual")])
    monkeypatch.setattr(type(loaded.adapter), "batch_axis", lambda self, component: 0)
    masks = loaded.adapter.position_groups(conflict["input_ids"])
    groups = ("audio", "image", "text", "answer")
    conditions = [Condition(1, (1,), group, "residual") for group in groups]
    activations = {site: value for site, value in activations.items()}
    batched = patcher.patched(conflict, activations, conditions, masks)
    source = reference.capture(loaded.model, "gemma3n", clean, 2)
    expected = reference.patched(
        loaded.model, "gemma3n", conflict, source, [1], "residual", masks["image"]
    )
    assert not torch.allclose(batched[1], expected, atol=1e-4)


def test_merged_streams_are_what_the_final_norm_reads(loaded, family_root: Path) -> None:
    """For the logit lens and probes: one (seq, hidden) vector per position, exactly the model's
    own merge after the last layer."""
    clean, _ = runs(loaded, family_root / "media")
    _, activations = Patcher(loaded.adapter).record(clean, [(2, "residual")])
    seen: dict[str, torch.Tensor] = {}

    def keep(module, args) -> None:
        seen["norm_input"] = args[0][0].clone()

    norm = loaded.model.model.language_model.norm
    handle = norm.register_forward_pre_hook(keep)
    try:
        reference.forward(loaded.model, clean)
    finally:
        handle.remove()
    with torch.no_grad():
        merged = loaded.adapter.merge_streams(activations[(2, "residual")])
    assert merged.shape == seen["norm_input"].shape
    assert torch.allclose(merged, seen["norm_input"], atol=1e-6)


def test_audio_longer_than_30_seconds_is_refused(loaded) -> None:
    from patchwork import DataError
    from patchwork.data.sample import RunMedia

    long_audio = RunMedia(
        waveform=np.zeros(31 * 16_000, np.float32), image_features=torch.zeros(1, 4, 16)
    )
    with pytest.raises(DataError, match="at most 30 s of audio, got 31.0 s"):
        loaded.adapter.build_inputs([8], long_audio)
