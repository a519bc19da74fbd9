"""The figures of ``patchwork bench``: the grades (``bench.png``) and the faithfulness curves
(``faithfulness.png``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from patchwork.bench.suite import GRADES


def grade_frame(graded: xr.Dataset) -> pd.DataFrame:
    """The grades (organism × technique) of a ``bench.zarr`` dataset as a flat table, one row per
    organism and method (the curves, over more dimensions, left out)."""
    return (
        graded[[name for name in GRADES if name in graded.data_vars]].to_dataframe().reset_index()
    )


#: The panels of :func:`plot_bench`: grade, title, y-axis label.
PANELS = (
    ("auroc", "AUROC of the layer steps\n(window organisms; 1: planted ones first)", "AUROC"),
    ("error_layers", "located window's error in layers\n(window organisms; 0: exact)", "layers"),
    (
        "lens_error",
        "logit lens: first decodable layer's distance\nfrom the window's first (0: exact)",
        "layers",
    ),
    (
        "first_planted",
        "clips whose first-ranked head\n(or path) is planted (head organisms)",
        "share",
    ),
)


def plot_bench(graded: xr.Dataset):
    """Per organism and method: AUROC of the layer steps, error of the located window and of the
    logit lens's first decodable layer (window organisms), the clips whose first-ranked head or
    path is planted (head organisms). One colour per method in every panel, named by one legend
    below the panels (never over a bar)."""
    import seaborn as sns
    from matplotlib.figure import Figure

    frame = grade_frame(graded)
    methods = [str(method) for method in graded["technique"].values]
    colours = dict(zip(methods, sns.color_palette(n_colors=len(methods)), strict=True))
    # wide enough for every organism's bars (15 in the suite), never narrower than before
    figure = Figure(figsize=(max(17.0, 1.8 * graded.sizes["organism"]), 4.8), layout="constrained")
    figure.suptitle("patchwork bench: how well each method recovers the planted truth")
    legend: dict[str, Any] = {}
    for axes, (column, title, label) in zip(figure.subplots(1, len(PANELS)), PANELS, strict=True):
        shown = frame[np.isfinite(frame[column].astype(float))]
        if shown.empty:
            axes.set_axis_off()
            continue
        present = set(shown["technique"])
        sns.barplot(
            shown,
            x="organism",
            y=column,
            hue="technique",
            hue_order=[method for method in methods if method in present],
            palette=colours,
            ax=axes,
        )
        axes.set_title(title)
        axes.set(xlabel="", ylabel=label)
        names = [tick.get_text() for tick in axes.get_xticklabels()]
        axes.set_xticks(  # a long name on two lines, every name ending under its bars
            axes.get_xticks(),
            [name.replace(" audio-in-video", "\naudio-in-video") for name in names],
            rotation=35,
            ha="right",
            rotation_mode="anchor",
        )
        for handle, method in zip(*axes.get_legend_handles_labels(), strict=True):
            legend.setdefault(method, handle)
        if axes.get_legend() is not None:
            axes.get_legend().remove()
    if legend:
        ordered = [method for method in methods if method in legend]
        figure.legend(
            [legend[method] for method in ordered],
            ordered,
            loc="outside lower center",
            ncols=len(ordered),
            title="method",
            frameon=False,
        )
    return figure


def plot_faithfulness(graded: xr.Dataset):
    """One panel per organism with faithfulness curves (:mod:`patchwork.bench.faithfulness`):
    the share of the full patch's restoration against the number of cells patched, for each
    method's top-k (solid) and bottom-k (dashed) cells and the planted truth's (black), one
    colour per method named by one legend below the panels."""
    import seaborn as sns
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    curves = graded["faithfulness"]
    shown = [
        str(organism)
        for organism in graded["organism"].values
        if bool(graded["planted_faithfulness"].sel(organism=organism).notnull().any())
    ]
    methods = [str(method) for method in graded["technique"].values]
    colours = dict(zip(methods, sns.color_palette(n_colors=len(methods)), strict=True))
    columns = min(max(len(shown), 1), 4)  # four panels a row, as many rows as it takes
    rows = -(-max(len(shown), 1) // columns)
    figure = Figure(figsize=(max(4.6 * columns, 9.0), 4.2 * rows + 0.6), layout="constrained")
    figure.suptitle(
        "faithfulness: each ranking's top-k (solid) and bottom-k (dashed) cells patched "
        "together,\nas a share of the full patch (planted truth: black)"
    )
    drawn: list[str] = []
    grid = np.atleast_1d(figure.subplots(rows, columns)).ravel()
    for spare in grid[len(shown) :]:
        spare.set_axis_off()
    for axes, organism in zip(grid, shown, strict=False):
        planted = graded["planted_faithfulness"].sel(organism=organism)
        cells = int(planted.sel(ranked="top").notnull().sum())
        k = np.arange(0, cells + 1)
        for ranked, style in (("top", "-"), ("bottom", "--")):
            values = planted.sel(ranked=ranked).values[:cells]
            axes.plot(k, np.r_[0.0, values], style, color="black", linewidth=2.4, alpha=0.6)
        for method in methods:
            line = curves.sel(organism=organism, technique=method)
            if not bool(line.notnull().any()):
                continue
            drawn += [method] if method not in drawn else []
            for ranked, style in (("top", "-"), ("bottom", "--")):
                values = line.sel(ranked=ranked).values[:cells]
                axes.plot(k, np.r_[0.0, values], style, color=colours[method], linewidth=1.3)
        axes.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
        used = int(graded["faithfulness_used"].sel(organism=organism))
        total = int(graded["faithfulness_total"].sel(organism=organism))
        axes.set_title(f"{organism}\n{cells} cells, {used} of {total} clips")
        axes.set(xlabel="cells patched (k)", ylabel="share of the full patch")
    handles = [Line2D([], [], color="black", linewidth=2.4, alpha=0.6)] + [
        Line2D([], [], color=colours[method]) for method in drawn
    ]
    figure.legend(
        handles,
        ["planted truth", *drawn],
        loc="outside lower center",
        ncols=min(len(handles), 4),
        frameon=False,
    )
    return figure


def reference_lines(graded: xr.Dataset) -> list[str]:
    """One line per organism with faithfulness curves: the planted truth's areas (the reference
    each method's CPR, CMD and bottom area are read against), the full patch's share of the
    clean − conflict gap, and the clips used of all; each area with its 95% interval over clips."""
    if "planted_cpr" not in graded:
        return []
    lines = []
    for organism in graded["organism"].values:
        row = graded.sel(organism=organism)
        used, total = float(row["faithfulness_used"]), float(row["faithfulness_total"])
        if not np.isfinite(total):
            continue
        if not np.isfinite(float(row["planted_cpr"])):
            lines.append(f"{organism}: faithfulness untestable ({used:.0f} of {total:.0f} clips)")
            continue
        lines.append(
            f"{organism}: planted truth CPR {_with_interval(row, 'planted_cpr')}, "
            f"CMD {_with_interval(row, 'planted_cmd')}, "
            f"bottom {_with_interval(row, 'planted_bottom_area')}; "
            f"the full patch restores {float(row['full_patch']):.3f} of the clean − conflict gap "
            f"({used:.0f} of {total:.0f} clips)"
        )
    return lines


def _with_interval(row: xr.Dataset, name: str) -> str:
    """``row[name]`` to three places, with its interval (``name_low``, ``name_high``) where the
    store has one."""
    text = f"{float(row[name]):.3f}"
    if f"{name}_low" in row and np.isfinite(float(row[f"{name}_low"])):
        text += f" [{float(row[f'{name}_low']):.3f}, {float(row[f'{name}_high']):.3f}]"
    return text
