"""patchwork's own reports of every kind but activation patching (whose report is in
:mod:`patchwork.analysis.patching_report`), one per study method kind (the contract is
:class:`~patchwork.analysis.reports.Report`; they are registered in ``pyproject.toml`` under
``patchwork.reports``).

Each summary states its estimator and the samples it used of all in ``attrs["caption"]``. The
activation-patching report reads the same profile as the heatmap and ``locate`` (ratio of means
over the samples :func:`~patchwork.analysis.results.sample_coverage` keeps); the others average
over the samples marked done, as their figures in :mod:`patchwork.analysis.method_figures` do.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import xarray as xr
from matplotlib.figure import Figure

from patchwork.analysis import method_figures as figures
from patchwork.analysis.bootstrap import bootstrap_mean
from patchwork.analysis.reports import Report, describe_summary, unfinished
from patchwork.analysis.results import (
    AnalysisError,
    check_choice,
    done_mask,
)

#: Rows of the ranked tables (heads per position group, paths) in a summary.
TOP = 5


def _done(results: xr.Dataset) -> xr.Dataset:
    return results.isel(sample=done_mask(results))


def _counts(results: xr.Dataset) -> tuple[int, int]:
    """Samples marked done, samples stored."""
    return int(done_mask(results).sum()), int(results.sizes["sample"])


def _require_done(results: xr.Dataset, kind: str) -> xr.Dataset:
    done = _done(results)
    if done.sizes["sample"] == 0:
        raise AnalysisError(f"no sample in the store is marked done yet: no {kind} summary")
    return done


class KnockoutReport(Report):
    """Per knockout rule: how many knockouts it holds and the strongest one's mean effect."""

    kind = "attention_knockout"
    variables = ("knockout_effect", "knockout_baseline")
    optional = ("knockout_token",)
    instead = (
        "read the effect per rule in its summary (`patchwork status STORE`) and knockout.png "
        "(`patchwork plot`)"
    )

    def summary(
        self,
        results: xr.Dataset,
        metric: str | None = None,
        seed: int = 0,
        n_resamples: int = 1000,
        **options: Any,
    ) -> pd.DataFrame:
        """One row per rule: how many knockouts it holds, the one with the largest mean absolute
        effect (``strongest``: ``rule@first-last[#hheads]``) and that mean with its 95% bootstrap
        interval."""
        metric = metric or "normalized_effect"
        done = _require_done(results, self.kind)
        check_choice("metric", metric, [str(m) for m in done["metric"].values])
        effect = done["knockout_effect"].sel(metric=metric, drop=True).astype("float64")
        stats = bootstrap_mean(effect, 0.95, n_resamples, seed).to_dataframe().reset_index()
        labels = figures.knockout_frame(done, metric).drop_duplicates("knockout")
        stats = stats.merge(labels[["knockout", "rule", "first", "last", "heads"]], on="knockout")
        rows = []
        for rule, knockouts in stats.groupby("rule", sort=False):
            strongest = knockouts.loc[knockouts["mean"].abs().fillna(-1).idxmax()]
            rows.append(
                {
                    "rule": rule,
                    "knockouts": len(knockouts),
                    "strongest": strongest["knockout"],
                    metric: strongest["mean"],
                    "ci_low": strongest["ci_low"],
                    "ci_high": strongest["ci_high"],
                }
            )
        used, total = _counts(results)
        scale = " (0 = the unblocked run, 1 = the reference run)" if "normalized" in metric else ""
        return describe_summary(
            pd.DataFrame(rows),
            self.kind,
            f"attention knockout: per rule, the knockout with the largest mean {metric}{scale}",
            "mean with a 95% percentile bootstrap interval",
            used,
            total,
            unfinished(results),
        )

    def figures(
        self, results: xr.Dataset, metric: str | None = None, **options: Any
    ) -> dict[str, Figure]:
        return {"knockout": figures.plot_knockout(results, metric or "normalized_effect")}


class LogitLensReport(Report):
    """Per position group and layer: the lens probability and rank of the two answers."""

    kind = "logit_lens"
    keys = ("group", "layer")
    variables = ("lens_probability", "lens_rank")
    optional = ("lens_top_tokens",)
    instead = "read where each answer rises through the layers in logit_lens.png (`patchwork plot`)"

    def summary(self, results: xr.Dataset, **options: Any) -> pd.DataFrame:
        """Rows (group, layer); mean probability and median rank (0 = top) of each answer."""
        done = _require_done(results, self.kind)
        probability = done["lens_probability"].mean("sample", skipna=True)
        rank = done["lens_rank"].median("sample", skipna=True)
        answers = [str(answer) for answer in done["lens_answer"].values]
        columns = {f"p({answer})": probability.sel(lens_answer=answer) for answer in answers}
        columns |= {f"rank {answer}": rank.sel(lens_answer=answer) for answer in answers}
        frame = (
            xr.Dataset({name: value.drop_vars("lens_answer") for name, value in columns.items()})
            .to_dataframe(dim_order=["lens_group", "lens_layer"])
            .reset_index()
            .rename(columns={"lens_group": "group", "lens_layer": "layer"})
        )
        used, total = _counts(results)
        return describe_summary(
            frame,
            self.kind,
            "logit lens: probability and rank (0 = top token) of each answer, per position group "
            "and layer",
            "mean probability and median rank",
            used,
            total,
            unfinished(results),
        )

    def figures(self, results: xr.Dataset, **options: Any) -> dict[str, Figure]:
        return {"logit_lens": figures.plot_logit_lens(results)}


class AttentionShareReport(Report):
    """Per query group and layer: the share of attention on each key group (head mean)."""

    kind = "attention_share"
    keys = ("from", "layer")
    variables = ("share_mean",)
    optional = ("share",)
    instead = (
        "read how attention moves between position groups by layer in attention_share.png "
        "(`patchwork plot`)"
    )

    def summary(self, results: xr.Dataset, **options: Any) -> pd.DataFrame:
        """Rows (from, layer); columns: key groups; values: mean share over samples."""
        done = _require_done(results, self.kind)
        share = done["share_mean"].mean("sample", skipna=True)
        frame = pd.DataFrame(
            share.transpose("share_query", "share_layer", "share_key")
            .stack(row=("share_query", "share_layer"))
            .transpose("row", "share_key")
            .to_pandas()
        )
        frame.columns = [str(key) for key in frame.columns]
        frame = frame.reset_index().rename(columns={"share_query": "from", "share_layer": "layer"})
        used, total = _counts(results)
        return describe_summary(
            frame,
            self.kind,
            "attention share: share of the 'from' group's attention on each key group "
            "(columns), mean over heads",
            "mean",
            used,
            total,
            unfinished(results),
        )

    def figures(self, results: xr.Dataset, **options: Any) -> dict[str, Figure]:
        drawn = {"attention_share": figures.plot_attention_share(results)}
        if "share" in results.data_vars:
            queries = [str(query) for query in results["share_query"].values]
            key_groups = [str(key) for key in results["share_key"].values]
            if "answer" in queries and "audio" in key_groups:
                drawn["attention_heads"] = figures.plot_attention_heads(results)
        return drawn


class ProbesReport(Report):
    """Per position group and layer: cross-validated probe accuracy against shuffled labels."""

    kind = "probes"
    keys = ("group", "layer")
    variables = ("probe_features",)
    optional = ("probe_logit_diff",)
    instead = (
        "read where the label becomes decodable in its summary (accuracy vs shuffled labels) "
        "and probes.png (`patchwork plot`)"
    )

    def scores(
        self, results: xr.Dataset, target: str = "audio_answer", seed: int = 0
    ) -> xr.Dataset:
        """:func:`~patchwork.analysis.probes.probe_scores` of the samples marked done."""
        from patchwork.analysis.probes import probe_scores

        if target not in results.coords:
            raise AnalysisError(f"the store has no per-sample {target!r} labels to probe for")
        done = _require_done(results, self.kind)
        if done.sizes["sample"] < 2:
            raise AnalysisError("a cross-validated probe needs at least 2 done samples")
        folds = min(5, done.sizes["sample"])
        return probe_scores(done, target, folds=folds, seed=seed)

    def summary(
        self, results: xr.Dataset, seed: int = 0, target: str = "audio_answer", **options: Any
    ) -> pd.DataFrame:
        """Rows (group, layer): ``accuracy``, ``shuffled`` (the same probe on permuted labels)
        and ``chance`` (share of the most frequent label)."""
        scores = self.scores(results, target, seed)
        frame = (
            scores.to_dataframe(dim_order=["probe_group", "probe_layer"])
            .reset_index()
            .rename(columns={"probe_group": "group", "probe_layer": "layer"})
        )
        frame["chance"] = scores.attrs["chance"]
        used, total = _counts(results)
        classes = len(scores.attrs["classes"])
        return describe_summary(
            frame,
            self.kind,
            f"probes: does a linear probe decode {target} ({classes} classes) from the pooled "
            "residual stream, beyond shuffled labels?",
            f"held-out accuracy of a {min(5, used)}-fold cross-validated logistic regression",
            used,
            total,
            unfinished(results),
        )

    def figures(
        self, results: xr.Dataset, seed: int = 0, target: str = "audio_answer", **options: Any
    ) -> dict[str, Figure]:
        return {"probes": figures.plot_probes(self.scores(results, target, seed))}


class BaseComparisonReport(Report):
    """Per run and position group: how far the model's next-token distribution is from its
    base model's."""

    kind = "base_comparison"
    keys = ("run", "group")
    variables = ("base_kl", "base_top_changed")
    instead = (
        "read how far the model moved from its base per run and position group in its summary "
        "and base_comparison.png (`patchwork plot`)"
    )

    def summary(self, results: xr.Dataset, **options: Any) -> pd.DataFrame:
        """Rows (run, group): mean KL(model ‖ base) in nats and the mean share of positions whose
        top token changed."""
        done = _require_done(results, self.kind)
        frame = (
            xr.Dataset(
                {
                    "kl_nats": done["base_kl"].mean("sample", skipna=True),
                    "top_token_changed": done["base_top_changed"].mean("sample", skipna=True),
                }
            )
            .to_dataframe(dim_order=["base_run", "base_group"])
            .reset_index()
            .rename(columns={"base_run": "run", "base_group": "group"})
        )
        used, total = _counts(results)
        return describe_summary(
            frame,
            self.kind,
            "base comparison: KL(model ‖ base) of the next-token distribution and the share of "
            "positions whose top token changed",
            "mean",
            used,
            total,
            unfinished(results),
        )

    def figures(self, results: xr.Dataset, **options: Any) -> dict[str, Figure]:
        return {"base_comparison": figures.plot_base_comparison(results)}


class SteeringReport(Report):
    """Dose-response of steering on the held-out clips."""

    kind = "steering"
    keys = ("layer", "alpha", "direction")
    variables = ("steering_effect", "steering_audio_top", "steering_held_out")
    optional = ("steering_baseline",)
    instead = "read the dose-response in its summary and steering.png (`patchwork plot`)"

    def summary(self, results: xr.Dataset, **options: Any) -> pd.DataFrame:
        """:func:`~patchwork.analysis.method_figures.steering_table`: per (layer, α, direction)
        the held-out clips' audio-answer rate and mean logit difference and normalized effect."""
        done = _require_done(results, self.kind)
        held_out = done["steering_held_out"].values == 1
        if not held_out.any():
            raise AnalysisError("no held-out sample is done yet: no steering summary")
        _, total = _counts(results)
        fitted = done["sample"].values[~held_out]
        table = figures.steering_table(results).drop(columns="n")
        return describe_summary(
            table.rename(columns={"audio_answer_rate": "audio_rate"}),
            self.kind,
            "steering: share of held-out clips answered with the audio answer, and their mean "
            "logit difference and normalized effect, per layer, α and direction",
            "mean",
            int(held_out.sum()),
            total,
            {
                "fitted the direction (not measured)": tuple(map(str, fitted)),
                **unfinished(results),
            },
        )

    def figures(self, results: xr.Dataset, **options: Any) -> dict[str, Figure]:
        return {"steering": figures.plot_steering(results)}


_GAP_SHARE = (
    "share of the logit-difference gap restored, Σ(patched − target) / Σ(source − target) "
    "(ratio of means), with a 95% percentile bootstrap interval,"
)
_RANK_COLUMNS = ["restored", "ci_low", "ci_high", "above_floor"]


class HeadPatchingReport(Report):
    """The heads whose patching restores most of the gap, per position group."""

    kind = "head_patching"
    variables = ("head_effect", "head_baseline")
    optional = ("head_verified",)
    instead = "rank heads with its summary (top heads per position group) and heads.png"

    def summary(
        self, results: xr.Dataset, seed: int = 0, n_resamples: int = 1000, **options: Any
    ) -> pd.DataFrame:
        """The top :data:`TOP` heads of each position group, as
        :func:`~patchwork.analysis.method_figures.rank_heads` ranks them."""
        _require_done(results, self.kind)
        ranked = []
        for group in results["head_group"].values:
            top = figures.rank_heads(results, str(group), n_resamples=n_resamples, seed=seed)
            ranked.append(top.head(TOP).assign(group=str(group)))
        frame = pd.concat(ranked, ignore_index=True)
        floor = float(frame["floor"].iloc[0])
        frame = frame[["group", "rank", "layer", "head", *_RANK_COLUMNS]]
        used, total = _counts(results)
        return describe_summary(
            frame,
            self.kind,
            f"head patching: the top {TOP} heads per position group (above_floor: above the "
            f"noise floor of {floor:.2f} for every head at once)",
            _GAP_SHARE,
            used,
            total,
            unfinished(results),
        )

    def figures(self, results: xr.Dataset, **options: Any) -> dict[str, Figure]:
        return {"heads": figures.plot_heads(results)}


class PathPatchingReport(Report):
    """The sender → receiving-head input paths that restore most of the gap."""

    kind = "path_patching"
    variables = ("path_effect", "path_baseline")
    instead = "rank paths with its summary (top paths) and paths.png (`patchwork plot`)"

    def summary(
        self, results: xr.Dataset, seed: int = 0, n_resamples: int = 1000, **options: Any
    ) -> pd.DataFrame:
        """The top :data:`TOP` × 2 paths as
        :func:`~patchwork.analysis.method_figures.rank_paths` ranks them."""
        _require_done(results, self.kind)
        frame = figures.rank_paths(results, n_resamples=n_resamples, seed=seed).head(2 * TOP)
        floor = float(frame["floor"].iloc[0])
        frame = frame.assign(
            sender=[
                figures.sender_name(sender, layer)
                for sender, layer in zip(frame["sender"], frame["sender_layer"], strict=True)
            ],
            receiver=[
                f"{layer}:{head} {name}"
                for layer, head, name in zip(
                    frame["receiver_layer"],
                    frame["receiver_head"],
                    frame["receiver_input"],
                    strict=True,
                )
            ],
        )[["rank", "sender", "receiver", *_RANK_COLUMNS]]
        used, total = _counts(results)
        return describe_summary(
            frame.reset_index(drop=True),
            self.kind,
            f"path patching: the top {2 * TOP} paths, sender → receiving head (layer:head) "
            f"through its queries, keys or values (above_floor: above the noise floor of "
            f"{floor:.2f} for every path at once)",
            _GAP_SHARE,
            used,
            total,
            unfinished(results),
        )

    def figures(self, results: xr.Dataset, **options: Any) -> dict[str, Figure]:
        return {"paths": figures.plot_paths(results)}


__all__ = [
    "AttentionShareReport",
    "BaseComparisonReport",
    "HeadPatchingReport",
    "KnockoutReport",
    "LogitLensReport",
    "PathPatchingReport",
    "ProbesReport",
    "SteeringReport",
]
