"""Figures of the knockout, logit-lens, attention-share, probe, base-comparison and steering arrays.

Every function reads a study store's dataset (``patchwork.open_results``) or, for probes, the
output of :func:`~patchwork.analysis.probes.probe_scores`, and returns a
:class:`matplotlib.figure.Figure` built without pyplot (seaborn draws on its axes). Lines show the
mean over samples with a 95% bootstrap interval (seaborn's default estimator).
"""

from __future__ import annotations

import pandas as pd
import seaborn as sns
import xarray as xr
from matplotlib.figure import Figure

from patchwork.analysis.profile import DEFAULT_FIXED_FLOOR

#: Bootstrap resamples behind every interval (seaborn draws 1000 by default; slower, no better).
N_BOOT = 200
_COLOURS = sns.color_palette("colorblind", 10)
#: Every position group (and answer kind) keeps its colour in every figure.
PALETTE = {
    "audio": _COLOURS[0],
    "video": _COLOURS[1],
    "image": _COLOURS[5],
    "text": _COLOURS[7],
    "answer": _COLOURS[2],
    "all": _COLOURS[4],
    "visual": _COLOURS[1],
}


def _done(results: xr.Dataset) -> xr.Dataset:
    if "done" not in results:
        return results
    return results.sel(sample=results["done"].values.astype(bool))


def _gap_ranking(
    changed: xr.DataArray,
    baseline: xr.DataArray,
    reference: xr.DataArray,
    name: str,
    confidence: float,
    n_resamples: int,
    seed: int,
    floor: float,
) -> pd.DataFrame:
    """The cells of ``changed`` (sample, …cells) ranked by the share of the baseline–reference
    gap they move, Σ(changed − baseline) / Σ(reference − baseline) over samples (column
    ``name``), with a percentile bootstrap interval: rank, the cells' coordinates, ``name``,
    ci_low, ci_high, n_samples, and the noise floor: ``simultaneous_low``, the share minus the
    ``confidence`` quantile of the largest deviation of any cell in a resample (a bound that
    holds for all cells at once, so picking the top cells does not fool it), ``floor`` and
    ``above_floor`` (simultaneous_low > floor)."""
    from patchwork.analysis.bootstrap import bootstrap_mean

    stats = bootstrap_mean(
        changed - baseline, confidence, n_resamples, seed, denominator=reference - baseline
    )
    frame = stats.to_dataframe().reset_index().rename(columns={"mean": name})
    frame["simultaneous_low"] = frame[name] - stats.attrs["simultaneous_halfwidth"]
    frame["floor"] = floor
    frame["above_floor"] = frame["simultaneous_low"] > floor
    frame = frame.sort_values(name, ascending=False, kind="stable").reset_index(drop=True)
    frame.insert(0, "rank", range(1, len(frame) + 1))
    return frame


NOISE_COLUMNS = ["simultaneous_low", "floor", "above_floor"]


def knockout_frame(results: xr.Dataset, metric: str = "normalized_effect") -> pd.DataFrame:
    """Long table of ``knockout_effect``: sample, rule, first and last blocked layer, the
    blocked heads (``"all"``, or e.g. ``"1,3"``), value."""
    effect = _done(results)["knockout_effect"].sel(metric=metric)
    frame = effect.to_dataframe(name="value").reset_index()[["sample", "knockout", "value"]]
    pattern = r"^(?P<rule>.+)@(?P<layers>[\d,-]+)(?:#h(?P<heads>[\d,]+))?$"
    spans = frame["knockout"].astype(str).str.extract(pattern)
    numbers = spans["layers"].str.findall(r"\d+")
    frame["rule"] = spans["rule"]
    frame["first"] = numbers.map(lambda found: int(found[0]))
    frame["last"] = numbers.map(lambda found: int(found[-1]))
    frame["heads"] = spans["heads"].fillna("all")
    return frame


def rank_knockout_heads(
    results: xr.Dataset,
    rule: str,
    n_resamples: int = 1000,
    seed: int = 0,
    floor: float = DEFAULT_FIXED_FLOOR,
) -> pd.DataFrame:
    """The knockouts of a ``heads: each`` rule ranked by the share of the run–reference gap of
    the logit difference they recover, Σ(knocked − run) / Σ(reference − run) over samples, with
    a 95% bootstrap interval and the noise floor (as :func:`rank_heads`). Columns: rank,
    knockout, first, last, head, recovered, ci_low, ci_high, n_samples, simultaneous_low, floor,
    above_floor."""
    done = _done(results)
    frame = knockout_frame(done, "logit_diff").drop_duplicates("knockout")
    chosen = frame[(frame["rule"] == rule) & (frame["heads"] != "all")]
    if chosen.empty:
        raise ValueError(f"no knockout of rule {rule!r} blocks single heads")
    knocked = done["knockout_effect"].sel(knockout=list(chosen["knockout"]), metric="logit_diff")
    base = done["knockout_baseline"].sel(metric="logit_diff")
    run, reference = base.isel(knockout_run=0, drop=True), base.isel(knockout_run=1, drop=True)
    ranked = _gap_ranking(knocked, run, reference, "recovered", 0.95, n_resamples, seed, floor)
    spans = chosen[["knockout", "first", "last", "heads"]].rename(columns={"heads": "head"})
    ranked = ranked.merge(spans, on="knockout")
    columns = ["rank", "knockout", "first", "last", "head", "recovered", "ci_low", "ci_high"]
    return ranked[[*columns, "n_samples", *NOISE_COLUMNS]]


def plot_knockout(results: xr.Dataset, metric: str = "normalized_effect") -> Figure:
    """Left: sliding-window sweeps, the metric against the window's first layer, one line per
    rule. Right: fixed rules (one knockout each) as bars. 0 = the unblocked run; for
    ``normalized_effect`` 1 = the reference run's logit difference fully restored. Sweeps over
    heads (``heads: each``) are left out: :func:`rank_knockout_heads` ranks them."""
    frame = knockout_frame(results, metric)
    head_sweeps = frame.groupby("rule")["heads"].nunique()
    frame = frame[frame["rule"].map(head_sweeps) == 1]
    spans = frame.groupby("rule")["knockout"].nunique()
    sweeps = frame[frame["rule"].map(spans) > 1]
    fixed = frame[frame["rule"].map(spans) == 1]
    figure = Figure(figsize=(10, 3.6), layout="constrained")
    left, right = figure.subplots(1, 2, width_ratios=(3, 2))
    if len(sweeps):
        sns.lineplot(
            sweeps, x="first", y="value", hue="rule", marker="o", ax=left, n_boot=N_BOOT, seed=0
        )
        window = int((sweeps["last"] - sweeps["first"]).max()) + 1
        left.set_xlabel(f"first blocked layer (window of {window})")
    left.set_ylabel(metric.replace("_", " "))
    left.axhline(0, color="grey", lw=0.8)
    if metric == "normalized_effect":
        left.axhline(1, color="grey", lw=0.8, ls="--")
    left.set_title("knockout sweeps")
    if len(fixed):
        sns.barplot(
            fixed, y="knockout", x="value", ax=right, color=_COLOURS[0], n_boot=N_BOOT, seed=0
        )
        right.axvline(0, color="grey", lw=0.8)
        right.set_xlabel(metric.replace("_", " "))
        right.set_ylabel("")
    right.set_title("fixed knockouts")
    return figure


def plot_logit_lens(results: xr.Dataset) -> Figure:
    """Per position group: probability of the audio and the visual answer through the lens,
    layer by layer (top row), and their rank (bottom row, 0 = top token)."""
    data = _done(results)
    groups = [str(g) for g in data["lens_group"].values]
    figure = Figure(figsize=(4 * len(groups), 6), layout="constrained")
    axes = figure.subplots(2, len(groups), squeeze=False)
    for column, group in enumerate(groups):
        for row, name in enumerate(("lens_probability", "lens_rank")):
            frame = data[name].sel(lens_group=group).to_dataframe(name="value").reset_index()
            ax = axes[row, column]
            sns.lineplot(
                frame,
                x="lens_layer",
                y="value",
                hue="lens_answer",
                palette=PALETTE,
                marker="o",
                ax=ax,
                n_boot=N_BOOT,
                seed=0,
            )
            ax.set_xlabel("layer")
            ax.set_ylabel("probability" if row == 0 else "rank (0 = top)")
            ax.set_title(f"logit lens at {group} positions")
            if row == 1:
                ax.set_yscale("symlog")
    return figure


def plot_attention_share(results: xr.Dataset) -> Figure:
    """Per query group: share of attention mass on each key group, layer by layer (head mean)."""
    data = _done(results)
    queries = [str(q) for q in data["share_query"].values]
    figure = Figure(figsize=(4.5 * len(queries), 3.6), layout="constrained")
    axes = figure.subplots(1, len(queries), squeeze=False)[0]
    for ax, query in zip(axes, queries, strict=True):
        frame = data["share_mean"].sel(share_query=query).to_dataframe(name="share").reset_index()
        sns.lineplot(
            frame,
            x="share_layer",
            y="share",
            hue="share_key",
            palette=PALETTE,
            marker="o",
            ax=ax,
            n_boot=N_BOOT,
            seed=0,
        )
        ax.set_xlabel("layer")
        ax.set_ylabel("attention share (mean over heads)")
        ax.set_ylim(0, 1)
        ax.set_title(f"from {query} positions")
    return figure


def plot_attention_heads(results: xr.Dataset, query: str = "answer", key: str = "audio") -> Figure:
    """Layer × head heatmap of the mean share from ``query`` to ``key`` positions."""
    share = _done(results)["share"].sel(share_query=query, share_key=key).mean("sample")
    figure = Figure(figsize=(4, 3.6), layout="constrained")
    ax = figure.subplots()
    sns.heatmap(share.to_pandas(), vmin=0, vmax=1, cmap="viridis", annot=True, fmt=".2f", ax=ax)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(f"{query} → {key} attention share")
    return figure


def plot_probes(scores: xr.Dataset, baseline: xr.Dataset | None = None) -> Figure:
    """Probe accuracy per layer, one line per position group; dashed: shuffled labels; dotted:
    the same probe on ``baseline`` scores (e.g. the base model), when given."""
    figure = Figure(figsize=(6, 3.6), layout="constrained")
    ax = figure.subplots()
    for group in scores["probe_group"].values:
        colour = PALETTE.get(str(group), _COLOURS[3])
        cut = scores.sel(probe_group=group)
        layers = cut["probe_layer"].values
        ax.plot(layers, cut["accuracy"].values, marker="o", color=colour, label=str(group))
        ax.plot(layers, cut["shuffled"].values, ls="--", color=colour, alpha=0.6)
        if baseline is not None:
            ax.plot(
                layers,
                baseline.sel(probe_group=group)["accuracy"].values,
                ls=":",
                color=colour,
                alpha=0.8,
            )
    ax.axhline(scores.attrs.get("chance", 0), color="grey", lw=0.8)
    ax.set_xlabel("layer")
    ax.set_ylabel("cross-validated accuracy")
    ax.set_ylim(0, 1.02)
    key = "dashed: shuffled labels" + ("; dotted: baseline" if baseline is not None else "")
    ax.set_title(f"probes decoding {scores.attrs.get('target', '')}\n({key})")
    ax.legend(title="position group")
    return figure


def plot_base_comparison(results: xr.Dataset) -> Figure:
    """KL(model ‖ base) in nats and the share of changed top tokens, per run and group."""
    data = _done(results)
    figure = Figure(figsize=(9, 3.4), layout="constrained")
    axes = figure.subplots(1, 2)
    for ax, name, label in zip(
        axes,
        ("base_kl", "base_top_changed"),
        ("KL(model ‖ base), nats", "top token changed"),
        strict=True,
    ):
        frame = data[name].to_dataframe(name="value").reset_index()
        sns.barplot(frame, x="base_group", y="value", hue="base_run", ax=ax, n_boot=N_BOOT, seed=0)
        ax.set_xlabel("position group")
        ax.set_ylabel(label)
    return figure


def steering_frame(results: xr.Dataset) -> pd.DataFrame:
    """Long table of the held-out samples' steered runs: sample, layer, alpha, direction,
    audio_top (1: the audio answer is the top token) and each metric."""
    held = _done(results)
    held = held.sel(sample=held["steering_held_out"].values == 1)
    effect = held["steering_effect"].to_dataset(dim="metric")
    frame = effect.assign(audio_top=held["steering_audio_top"]).to_dataframe()
    frame = frame.reset_index()[
        ["sample", "steering_layer", "steering_alpha", "steering_direction", "audio_top"]
        + [str(metric) for metric in held["metric"].values]
    ]
    return frame.rename(
        columns={
            "steering_layer": "layer",
            "steering_alpha": "alpha",
            "steering_direction": "direction",
        }
    )


def steering_table(results: xr.Dataset) -> pd.DataFrame:
    """Dose-response per (layer, alpha, direction) over the held-out samples: n, the share of
    clips answered with the audio answer, and the mean logit difference and normalized effect."""
    frame = steering_frame(results)
    return (
        frame.groupby(["layer", "alpha", "direction"])
        .agg(
            n=("sample", "nunique"),
            audio_answer_rate=("audio_top", "mean"),
            logit_diff=("logit_diff", "mean"),
            normalized_effect=("normalized_effect", "mean"),
        )
        .reset_index()
    )


def plot_steering(results: xr.Dataset) -> Figure:
    """Dose-response of steering on the held-out clips: the mean audio-answer rate (left) and
    logit difference (right) against α, one colour per layer, solid for the mean-difference
    direction and dashed for its shuffled control (:func:`steering_table` has the numbers)."""
    frame = steering_frame(results)
    figure = Figure(figsize=(11, 3.8), layout="constrained")
    left, right = figure.subplots(1, 2)
    for axes, column, label in (
        (left, "audio_top", "audio-answer rate"),
        (right, "logit_diff", "logit difference (audio − visual)"),
    ):
        sns.lineplot(
            frame,
            x="alpha",
            y=column,
            hue="layer",
            style="direction",
            palette="viridis",
            marker="o",
            ax=axes,
            errorbar=None,  # one line per layer and direction: intervals would hide them
            legend="full" if axes is right else False,
        )
        axes.set_xlabel("α (multiples of the direction)")
        axes.set_ylabel(label)
    right.axhline(0, color="grey", lw=0.8)
    sns.move_legend(right, "upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    left.set_title("steered runs, held-out clips")
    return figure


def rank_heads(
    results: xr.Dataset,
    group: str = "answer",
    confidence: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
    floor: float = DEFAULT_FIXED_FLOOR,
) -> pd.DataFrame:
    """Heads ranked by the share of the clean–conflict logit-difference gap that patching them
    at ``group``'s positions restores: Σ(patched − target) / Σ(source − target) over the samples
    (the study's default estimator), with a percentile bootstrap interval over samples, and the
    noise floor: ``above_floor`` marks the heads whose share stays above ``floor`` (default a
    tenth of the gap, as :func:`~patchwork.analysis.windows.locate`'s) under a bound that holds
    for every head at once (``simultaneous_low``). Columns: rank, layer, head, restored, ci_low,
    ci_high, n_samples, simultaneous_low, floor, above_floor."""
    done = _done(results)
    patched = done["head_effect"].sel(head_group=group, metric="logit_diff")
    base = done["head_baseline"].sel(metric="logit_diff")
    source, target = base.isel(head_run=0, drop=True), base.isel(head_run=1, drop=True)
    frame = _gap_ranking(patched, target, source, "restored", confidence, n_resamples, seed, floor)
    frame = frame.rename(columns={"head_layer": "layer"})
    columns = ["rank", "layer", "head", "restored", "ci_low", "ci_high", "n_samples"]
    return frame[[*columns, *NOISE_COLUMNS]]


def plot_heads(results: xr.Dataset) -> Figure:
    """Layer × head heatmaps, one per position group, of the share of the clean–conflict gap
    that patching one head restores (see :func:`rank_heads`)."""
    groups = [str(group) for group in results["head_group"].values]
    figure = Figure(figsize=(3.6 * len(groups) + 1, 3.6), layout="constrained")
    axes = figure.subplots(1, len(groups), squeeze=False)[0]
    frames = {group: rank_heads(results, group, n_resamples=1) for group in groups}
    limit = max(float(frame["restored"].abs().max()) for frame in frames.values()) or 1.0
    for ax, group in zip(axes, groups, strict=True):
        grid = frames[group].pivot(index="layer", columns="head", values="restored")
        sns.heatmap(
            grid,
            ax=ax,
            cmap="vlag",
            vmin=-limit,
            vmax=limit,
            annot=grid.size <= 64,
            fmt=".2f",
            cbar=ax is axes[-1],
            cbar_kws={"label": "share of the gap restored"},
        )
        ax.set_title(f"heads patched at {group}")
        ax.invert_yaxis()
    return figure


#: The dimensions of a path, in ``path_effect``'s order.
PATH_DIMS = ("sender", "sender_layer", "receiver_layer", "receiver_head", "receiver_input")


def path_effects(results: xr.Dataset) -> xr.DataArray:
    """``path_effect`` with every dimension of :data:`PATH_DIMS`: a store written before senders
    and receivers had kinds (issue 27) holds residual senders into values only."""
    effect = results["path_effect"]
    for dim, only in (("sender", "residual"), ("receiver_input", "values")):
        if dim not in effect.dims:
            effect = effect.expand_dims({dim: [only]})
    return effect.transpose("sample", *PATH_DIMS, ...)


def rank_paths(
    results: xr.Dataset,
    confidence: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
    floor: float = DEFAULT_FIXED_FLOOR,
) -> pd.DataFrame:
    """Paths (sender of a layer → one receiving head's queries, keys or values) ranked by the
    share of the clean–conflict logit-difference gap they restore, Σ(patched − target) /
    Σ(source − target) over samples, with a percentile bootstrap interval and the noise floor (as
    :func:`rank_heads`). Columns: rank, sender ('residual', 'mlp', 'head h'), sender_layer,
    receiver_layer, receiver_head, receiver_input, restored, ci_low, ci_high, n_samples,
    simultaneous_low, floor, above_floor."""
    done = _done(results)
    patched = path_effects(done).sel(metric="logit_diff")
    base = done["path_baseline"].sel(metric="logit_diff")
    source, target = base.isel(path_run=0, drop=True), base.isel(path_run=1, drop=True)
    paths = patched.stack(path=PATH_DIMS)
    paths = paths.isel(path=(paths["receiver_layer"] > paths["sender_layer"]).values)
    frame = _gap_ranking(paths, target, source, "restored", confidence, n_resamples, seed, floor)
    columns = ["rank", *PATH_DIMS, "restored"]
    return frame[[*columns, "ci_low", "ci_high", "n_samples", *NOISE_COLUMNS]]


def sender_name(sender: str, layer: int) -> str:
    """A sender as people read it: 'residual after 2', 'mlp 2', 'head 2:1'."""
    if sender == "residual":
        return f"residual after {layer}"
    if sender.startswith("head "):
        return f"head {layer}:{sender.split()[1]}"
    return f"{sender} {layer}"


def plot_paths(results: xr.Dataset) -> Figure:
    """One panel per receiver input (queries, keys, values): sender (kind and layer) × receiving
    head (layer:head) heatmap of the share of the gap each path restores
    (:func:`rank_paths`); blank where the receiver does not follow the sender."""
    frame = rank_paths(results, n_resamples=1)
    frame["receiver"] = [
        f"{layer}:{head}"
        for layer, head in zip(frame["receiver_layer"], frame["receiver_head"], strict=True)
    ]
    frame["sending"] = [
        sender_name(sender, layer)
        for sender, layer in zip(frame["sender"], frame["sender_layer"], strict=True)
    ]
    effect = path_effects(results)
    columns = [
        f"{layer}:{head}"
        for layer in effect["receiver_layer"].values
        for head in effect["receiver_head"].values
    ]
    senders = [str(sender) for sender in effect["sender"].values]
    layers = [int(layer) for layer in effect["sender_layer"].values]
    heads = [sender for sender in senders if sender.startswith("head ")]
    rows = [
        sender_name(sender, layer) for sender in senders if sender not in heads for layer in layers
    ] + [sender_name(sender, layer) for layer in layers for sender in heads]
    inputs = [str(name) for name in effect["receiver_input"].values]
    limit = float(frame["restored"].abs().max()) or 1.0
    width = max(6.0, 0.28 * len(columns) + 2)
    height = max(3.6, 0.22 * len(rows) + 1.5)
    figure = Figure(figsize=(width * len(inputs), height), layout="constrained")
    axes = figure.subplots(1, len(inputs), squeeze=False)[0]
    for ax, name in zip(axes, inputs, strict=True):
        part = frame[frame["receiver_input"] == name]
        grid = part.pivot(index="sending", columns="receiver", values="restored")
        grid = grid.reindex(
            index=[row for row in rows if row in grid.index],
            columns=[column for column in columns if column in grid.columns],
        )
        sns.heatmap(
            grid,
            ax=ax,
            cmap="vlag",
            vmin=-limit,
            vmax=limit,
            cbar=ax is axes[-1],
            cbar_kws={"label": "share of the gap restored"},
        )
        ax.set_xlabel(f"receiving head (layer:head), through its {name}")
        ax.set_ylabel("sender" if ax is axes[0] else "")
        ax.set_title(f"→ {name}")
    figure.suptitle("sender → receiving head → answer")
    return figure
