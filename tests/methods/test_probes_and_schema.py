"""The cross-validated probe decodes separable labels and not shuffled ones; study entries of the
new kinds are validated with file, line and field."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from patchwork import StudyError, load_study, parse_study
from patchwork.analysis.probes import probe_accuracy, probe_scores
from patchwork.methods.method import method_registry

from .helpers import study_text


def clusters(n: int, classes: int, dim: int, spread: float, seed: int):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    centres = torch.randn(classes, dim, generator=generator) * 3
    return centres[labels] + spread * torch.randn(n, dim, generator=generator), labels


def test_probe_decodes_clusters_and_not_noise() -> None:
    features, labels = clusters(60, 4, 8, 0.5, seed=0)
    assert probe_accuracy(features, labels, steps=100) >= 0.95
    noise = torch.randn(60, 8, generator=torch.Generator().manual_seed(1))
    assert probe_accuracy(noise, labels, steps=100) <= 0.5


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 1000), folds=st.integers(2, 5))
def test_probe_accuracy_is_a_fraction_of_samples(seed: int, folds: int) -> None:
    features, labels = clusters(20, 3, 4, 2.0, seed)
    accuracy = probe_accuracy(features, labels, folds=folds, seed=seed, steps=10)
    assert 0.0 <= accuracy <= 1.0
    assert round(accuracy * 20) == pytest.approx(accuracy * 20, abs=1e-9)


def test_probe_scores_read_labels_from_the_store_coordinates() -> None:
    features, labels = clusters(40, 4, 6, 0.3, seed=2)
    names = np.array(["moo", "tweet", "bark", "hiss"], dtype=object)[labels.numpy()]
    stacked = torch.stack([features, torch.randn(40, 6)], dim=1)[:, :, None]  # layer 1 = noise
    results = xr.Dataset(
        {
            "probe_features": (
                ("sample", "probe_layer", "probe_group", "probe_hidden"),
                stacked.numpy(),
            ),
            "done": ("sample", np.ones(40, dtype=bool)),
        },
        coords={
            "sample": [f"s{i}" for i in range(40)],
            "audio_answer": ("sample", names),
            "probe_layer": [0, 1],
            "probe_group": ["answer"],
        },
    )
    scores = probe_scores(results, "audio_answer", steps=80)
    assert float(scores["accuracy"].sel(probe_layer=0, probe_group="answer")) >= 0.95
    assert float(scores["shuffled"].sel(probe_layer=0, probe_group="answer")) <= 0.6
    assert float(scores["accuracy"].sel(probe_layer=1, probe_group="answer")) <= 0.6
    assert scores.attrs["chance"] == pytest.approx(0.25)


def test_every_kind_is_registered() -> None:
    assert set(method_registry()) >= {
        "activation_patching",
        "attention_knockout",
        "logit_lens",
        "attention_share",
        "probes",
        "base_comparison",
        "steering",
        "head_patching",
    }


def test_unknown_group_in_a_rule_names_line_and_field(tmp_path: Path) -> None:
    text = study_text().replace("keys: [video], layers: 1-2", "keys: [vidoe], layers: 1-2")
    path = tmp_path / "study.yaml"
    path.write_text(text)
    with pytest.raises(StudyError) as caught:
        load_study(path)
    line = next(i for i, row in enumerate(text.splitlines(), 1) if "vidoe" in row)
    assert f"study.yaml:{line}: interventions[0].rules.video_block.keys" in str(caught.value)


def test_rule_layer_out_of_range_names_the_rule(tmp_path: Path) -> None:
    from patchwork.engine.runner import prepare

    text = study_text().replace("layers: 1-2}", "layers: 1-5}")
    study = parse_study(text)
    with pytest.raises(
        StudyError, match=r"interventions\[0\]\.rules\.video_block\.layers: layer 3"
    ):
        prepare(study, tmp_path)


def test_a_kind_listed_twice_is_refused() -> None:
    text = study_text(methods="  - {kind: logit_lens}\n  - {kind: logit_lens, top_k: 2}\n")
    with pytest.raises(StudyError, match="once"):
        parse_study(text)


def test_runs_must_exist_and_differ() -> None:
    with pytest.raises(StudyError, match="pristine"):
        parse_study(study_text(methods="  - {kind: logit_lens, run: pristine}\n"))
    with pytest.raises(StudyError, match="must differ"):
        parse_study(
            study_text(
                methods="  - {kind: attention_knockout, reference: conflict, "
                "rules: {a: {queries: [answer], keys: [video]}}}\n"
            )
        )


def test_top_k_beyond_the_vocabulary_is_refused(tmp_path: Path) -> None:
    from patchwork.engine.runner import prepare

    study = parse_study(study_text(methods="  - {kind: logit_lens, top_k: 100}\n"))
    with pytest.raises(StudyError, match=r"interventions\[0\]\.top_k: 100 top tokens"):
        prepare(study, tmp_path)
