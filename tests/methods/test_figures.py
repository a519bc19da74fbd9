"""Every method's figure draws from a stored run (Agg backend) and the knockout table parses."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from patchwork.analysis import method_figures as figures
from patchwork.analysis.probes import probe_scores

from .conftest import Stored


def test_figures_draw_from_the_store(stored: Stored, tmp_path: Path) -> None:
    if stored.study.model.attention != "sdpa":
        return  # one implementation is enough for drawing
    results = stored.results
    frame = figures.knockout_frame(results)
    assert set(frame["rule"]) == {"video_block", "audio_sweep"}
    assert frame.loc[frame["knockout"] == "video_block@1-2", "last"].eq(2).all()
    scores = probe_scores(
        results.assign_coords(audio_answer=("sample", ["a", "b", "a"])), folds=2, steps=5
    )
    drawn = [
        figures.plot_knockout(results),
        figures.plot_logit_lens(results),
        figures.plot_attention_share(results),
        figures.plot_attention_heads(results),
        figures.plot_probes(scores, baseline=scores),
        figures.plot_base_comparison(results),
    ]
    for index, figure in enumerate(drawn):
        assert isinstance(figure, Figure) and figure.axes
        figure.savefig(tmp_path / f"{index}.png")
    assert len(list(tmp_path.glob("*.png"))) == len(drawn)
