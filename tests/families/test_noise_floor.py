"""The mismatched noise floor draws partners of the same token layout from the whole dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from patchwork import open_results, run_study
from patchwork.analysis import noise_floor
from patchwork.engine.runner import check_study
from patchwork.methods.activation_patching import noise_partners
from patchwork.study import load_study

from . import builders


@settings(max_examples=100, deadline=None)
@given(
    layouts=st.lists(st.sampled_from(["a", "b", "c", None]), min_size=1, max_size=30),
    count=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_partners_share_the_layout_and_do_not_depend_on_the_units(layouts, count, seed) -> None:
    partners = noise_partners(layouts, count, seed)
    for index, chosen in enumerate(partners):
        same = [other for other, key in enumerate(layouts) if key == layouts[index]]
        assert index not in chosen and len(set(chosen)) == len(chosen)
        assert set(chosen) <= set(same)
        assert len(chosen) == min(count, len(same) - 1)
    # a sample's partners depend on the dataset, the count and the seed alone
    assert noise_partners(layouts, count, seed) == partners
    more = noise_partners(layouts, count + 1, seed)
    assert all(set(a) <= set(b) for a, b in zip(partners, more, strict=True))


def _mixed_lengths_study(folder: Path, checkpoint: Path, media: Path, unit_size: int) -> Path:
    """Four clips alternating 2 s and 1 s (two token layouts) and one 1.5 s clip (a layout of
    its own): the next sample never shares a layout."""
    rows = []
    for index, seconds in enumerate((2, 1, 2, 1, 1.5)):
        own, other = ("dog", "cat") if index % 2 == 0 else ("cat", "dog")
        clip, other_clip = str(media / f"{own}.mkv"), str(media / f"{other}.mkv")
        runs = {
            "clean": {"video": clip, "seconds": seconds},
            "conflict": {"video": other_clip, "audio": clip, "seconds": seconds},
        }
        rows.append(
            {"id": f"c{index}", "audio_answer": "bark", "visual_answer": "meow", "runs": runs}
        )
    builders.write_manifest(folder / "samples.jsonl", rows)
    path = builders.study(folder, "qwen2_5_omni", checkpoint, "[audio, video, answer]")
    text = path.read_text().replace("noise_floor: none", "noise_floor: mismatched")
    path.write_text(text.replace("unit_size: 2", f"unit_size: {unit_size}"))
    return path


def test_clips_of_different_lengths_get_a_finite_noise_floor(
    checkpoint, family_root: Path, tmp_path: Path
) -> None:
    stores = {}
    for unit_size in (1, 3):
        folder = tmp_path / f"units{unit_size}"
        folder.mkdir()
        path = _mixed_lengths_study(
            folder, checkpoint("qwen2_5_omni"), family_root / "media", unit_size
        )
        study = load_study(path)
        notes = check_study(study).notes
        assert any("noise floor: 1 of 5 samples" in note and "c4: 0" in note for note in notes)
        stores[unit_size] = open_results(run_study(study, store_root=folder / "store").store).load()
    results = stores[1]
    partners = results["null_partner"].values[:, 0]
    np.testing.assert_array_equal(partners[:4], [2, 3, 0, 1])  # the other clip of its length
    assert np.isnan(partners[4])
    assert np.isfinite(results["null_effect"].values[:4]).all()
    assert np.isnan(results["null_effect"].values[4]).all()
    floor = noise_floor(results, "logit_diff", n_resamples=50)
    assert np.isfinite(floor.values).all()
    # the same partners and values whatever the units
    np.testing.assert_array_equal(stores[3]["null_partner"].values, results["null_partner"].values)
    np.testing.assert_allclose(
        stores[3]["null_effect"].values, results["null_effect"].values, rtol=0, atol=1e-5
    )


def test_validate_says_which_samples_lack_partners(
    checkpoint, family_root: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from patchwork.cli import app

    path = _mixed_lengths_study(tmp_path, checkpoint("qwen2_5_omni"), family_root / "media", 2)
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "noise floor: 1 of 5 samples have fewer than 1" in " ".join(result.output.split())
