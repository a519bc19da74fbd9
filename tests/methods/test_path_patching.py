"""Path patching by definition (Wang et al. 2022) against the plain-torch reference of
``path_reference`` (written here, sharing nothing with patchwork but the model's weights)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from patchwork import open_results, parse_study, run_study
from patchwork.errors import ModelError, StudyError
from patchwork.loading.model import load_model
from patchwork.patching.paths import check_structure

from .helpers import study_text
from .path_reference import check_against_reference

PATHS = """\
  - kind: path_patching
    from: clean
    into: conflict
    sender_group: video
    sender_layers: [0, 1]
    receiver_layers: [1, 2]
"""

EVERY_KIND = """\
  - kind: path_patching
    from: clean
    into: conflict
    sender_group: video
    senders: [residual, mlp, heads]
    sender_layers: [0, 1]
    receivers: [queries, keys, values]
    receiver_layers: [1, 2]
    freeze: {freeze}
"""

TESTBED = """\
name: paths-testbed
model: {{family: qwen2_5_omni, checkpoint: testbed, attention: sdpa}}
dataset: {{generator: testbed, samples: 2, seed: 0}}
runs:
  clean: {{audio: own, picture: blank}}
  conflict: {{audio: own, picture: other_category}}
question: what do you hear
interventions:
  - kind: path_patching
    senders: {senders}
    sender_layers: [0, 1]
    receivers: [values]
    receiver_layers: [1, 2]
    freeze: {freeze}
execution: {{batch_size: 16, unit_size: 2, seed: 0}}
"""


@pytest.mark.parametrize(
    ("freeze", "attention"),
    [("attention", "sdpa"), ("attention", "eager"), ("attention+mlp", "sdpa")],
)
def test_every_sender_and_receiver_equals_the_definition_by_hand(
    tmp_path: Path, freeze: str, attention: str
) -> None:
    """Residual, MLP and head senders × queries, keys and values receivers, under either freeze:
    every stored path equals the plain-torch reference (1e-5 on the logit difference)."""
    study = parse_study(study_text(attention, 2, EVERY_KIND.format(freeze=freeze)))
    results = open_results(run_study(study, tmp_path).store).load()
    effect = results["path_effect"].sel(metric="logit_diff")
    assert effect.dims == (
        "sample",
        "sender",
        "sender_layer",
        "receiver_layer",
        "receiver_head",
        "receiver_input",
    )
    assert list(effect["sender"].values) == ["residual", "mlp", "head 0", "head 1"]
    assert list(effect["receiver_input"].values) == ["queries", "keys", "values"]
    # a receiver at or before its sender is no path
    assert np.isnan(effect.sel(sender_layer=1, receiver_layer=1).values).all()
    assert not np.isnan(effect.sel(sender_layer=0).values).any()
    checked = check_against_reference(study, results, [(0, 1), (0, 2), (1, 2)], 1e-5)
    assert checked == 2 * 4 * 3 * 3 * 2  # samples × senders × pairs × inputs × heads


def test_recomputed_mlps_move_paths_only_where_an_mlp_lies_between(tmp_path: Path) -> None:
    """On the default model the two freezes agree on every path with no MLP between sender and
    receiver (a residual or MLP sender of layer l into layer l + 1) and differ on the others:
    IOI recomputes the MLPs on those paths, patchwork's old definition pinned them."""
    effects = {}
    for freeze in ("attention", "attention+mlp"):
        study = parse_study(TESTBED.format(senders="[residual, mlp, heads]", freeze=freeze))
        results = open_results(run_study(study, tmp_path / freeze).store).load()
        effects[freeze] = results["path_effect"].sel(metric="logit_diff")
    ioi, pinned = effects["attention"], effects["attention+mlp"]
    for sender in ("residual", "mlp"):
        for sent_layer, receiver in ((0, 1), (1, 2)):
            cell = {"sender": sender, "sender_layer": sent_layer, "receiver_layer": receiver}
            np.testing.assert_allclose(ioi.sel(cell), pinned.sel(cell), atol=1e-5, rtol=0)
    moved = abs(ioi - pinned).sel(sender_layer=0)
    assert float(moved.sel(sender="residual", receiver_layer=2).max()) > 0.1  # MLP 1 between
    heads = moved.sel(sender=[f"head {head}" for head in range(4)], receiver_layer=1)
    assert float(heads.max()) > 0.01  # the sending head's own MLP (layer 0) between


def test_the_default_is_ioi_and_reads_values_from_the_residual() -> None:
    entry = parse_study(study_text("sdpa", 1, PATHS)).interventions[0]
    assert (entry.freeze, entry.senders, entry.receivers) == (
        "attention",
        ("residual",),
        ("values",),
    )


def test_the_testbed_paths_equal_the_definition_by_hand(tmp_path: Path) -> None:
    """The default model (8 layers, 4 query heads over 2 key/value heads), IOI's freeze: the
    residual after layer 0 into every head's queries, keys and values of layer 3 (MLPs 1–2
    recomputed between)."""
    study = parse_study(
        TESTBED.format(senders="[residual]", freeze="attention").replace(
            "receivers: [values]\n    receiver_layers: [1, 2]",
            "receivers: [queries, keys, values]\n    receiver_layers: [3]",
        )
    )
    assert study.interventions[0].receiver_layers == (3,)
    results = open_results(run_study(study, tmp_path).store).load()
    assert check_against_reference(study, results, [(0, 3)], 1e-5) == 2 * 3 * 4


def test_receivers_must_follow_a_sender(tmp_path: Path) -> None:
    text = study_text("sdpa", 1, PATHS.replace("receiver_layers: [1, 2]", "receiver_layers: [0]"))
    with pytest.raises(StudyError, match=r"receiver_layers: no receiver layer comes after"):
        run_study(parse_study(text), tmp_path)


def test_sending_heads_must_exist(tmp_path: Path) -> None:
    text = study_text("sdpa", 1, PATHS + "    senders: [heads]\n    sender_heads: [1, 5]\n")
    with pytest.raises(StudyError, match=r"sender_heads: head 5 is out of range; the model has 2"):
        run_study(parse_study(text), tmp_path)


def test_a_layer_without_its_projections_is_refused_by_name() -> None:
    loaded = load_model(parse_study(study_text("sdpa", 1, PATHS)).model)
    attention = loaded.adapter.component(loaded.adapter.root, 1, "attention")
    attention.k_proj = torch.nn.Identity()
    check_structure(loaded.adapter, [0])
    with pytest.raises(
        ModelError, match=r"attention \(self_attn\) at layer 1 has no linear k_proj"
    ):
        check_structure(loaded.adapter, [0, 1])


def test_paths_are_ranked_by_the_share_of_the_gap_they_restore(tmp_path: Path) -> None:
    from patchwork.analysis import method_figures

    text = study_text("sdpa", 3, EVERY_KIND.format(freeze="attention"))
    results = open_results(run_study(parse_study(text), tmp_path).store).load()
    ranking = method_figures.rank_paths(results, n_resamples=200)
    assert len(ranking) == 4 * 3 * 2 * 3  # senders × (0→1, 0→2, 1→2) × heads × inputs
    assert (ranking["receiver_layer"] > ranking["sender_layer"]).all()
    assert ranking["restored"].is_monotonic_decreasing
    logit = results["path_effect"].sel(metric="logit_diff")
    base = results["path_baseline"].sel(metric="logit_diff").values  # (sample, [clean, conflict])
    for row in ranking.itertuples():
        values = logit.sel(
            sender=row.sender,
            sender_layer=row.sender_layer,
            receiver_layer=row.receiver_layer,
            receiver_head=row.receiver_head,
            receiver_input=row.receiver_input,
        ).values
        expected = (values - base[:, 1]).sum() / (base[:, 0] - base[:, 1]).sum()
        assert row.restored == pytest.approx(expected, rel=1e-6, abs=1e-9)
    figure = method_figures.plot_paths(results)
    assert [ax.get_title() for ax in figure.axes if ax.get_title()] == [
        "→ queries",
        "→ keys",
        "→ values",
    ]
    assert figure.axes[0].get_ylabel() == "sender"


def test_batching_mixed_senders_changes_nothing(tmp_path: Path) -> None:
    """Frozen rows of different senders, layers and receiver inputs share a batch: one row per
    batch and every row in one batch store the same values."""
    stored = []
    for size in (1, 64):
        text = study_text("sdpa", 1, EVERY_KIND.format(freeze="attention"))
        text = text.replace("batch_size: 4", f"batch_size: {size}")
        assert f"batch_size: {size}" in text
        results = open_results(run_study(parse_study(text), tmp_path / str(size)).store).load()
        stored.append(results["path_effect"].sel(metric="logit_diff").values)
    np.testing.assert_allclose(stored[0], stored[1], atol=1e-6, rtol=0)
