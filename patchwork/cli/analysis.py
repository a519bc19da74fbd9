"""``patchwork locate``, ``plot`` and ``compare``: the analysis on the command line."""

from __future__ import annotations

import json
import math
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from patchwork.analysis.bootstrap import MAX_RESAMPLES
from patchwork.analysis.results import UNFINISHED, AnalysisError, SampleCoverage
from patchwork.cli.options import MAX_SEED, given_path
from patchwork.errors import PatchworkError


class OutputFormat(StrEnum):
    """How ``patchwork locate`` prints its answer."""

    table = "table"
    json = "json"


StoreArgument = Annotated[Path, typer.Argument(parser=given_path, help="A results store (*.zarr).")]
ModelOption = Annotated[
    str | None, typer.Option("--model", help="Model group, when the store holds several.")
]
MetricOption = Annotated[
    str | None,
    typer.Option(
        "--metric",
        help="logit_diff, audio_probability or normalized_effect (default: normalized_effect, or "
        "logit_diff when no sample's baselines define it, which the output says).",
    ),
]
SeedOption = Annotated[
    int, typer.Option("--seed", min=0, max=MAX_SEED, help="Seed of the bootstrap.")
]
EstimatorOption = Annotated[
    str | None,
    typer.Option(
        "--estimator",
        help="How the normalized effect is averaged over samples: ratio_of_means (Σ restored / "
        "Σ gap; default) or mean_of_ratios. Default: the study's analysis.estimator.",
    ),
]
MinGapOption = Annotated[
    float | None,
    typer.Option(
        "--min-gap",
        help="Leave out samples whose clean − conflict gap is below this fraction of the median "
        "(default: the study's analysis.min_relative_gap, else 0.05).",
    ),
]
ResamplesOption = Annotated[
    int, typer.Option("--resamples", min=1, max=MAX_RESAMPLES, help="Bootstrap resamples.")
]
NoVerifyOption = Annotated[
    bool,
    typer.Option(
        "--no-verify", help="Read the store without checking finished units against checksums."
    ),
]


def open_store(path: Path, model: str | None = None, verify: bool = True) -> Any:
    """Open a results store as an :class:`xarray.Dataset`, read into memory (raises
    ``StoreError`` if missing, or damaged unless ``verify`` is off; a chunk that cannot be
    decoded raises it even then, here rather than while the figures or windows are computed)."""
    from patchwork.store.metadata import DAMAGE
    from patchwork.store.zarr_store import damaged_store, open_results

    results = open_results(path, model, verify=verify)
    try:
        return results.load()
    except DAMAGE as error:
        raise damaged_store(path, error) from None


def parse_floor(text: str) -> float | str:
    """``"auto"``, ``"null"`` or a number ≥ 0, as :func:`patchwork.analysis.locate` takes it."""
    if text in ("auto", "null"):
        return text
    try:
        value = float(text)
    except ValueError:
        raise AnalysisError(f"--floor must be auto, null or a number; got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise AnalysisError(f"--floor must be a finite number ≥ 0; got {text!r}")
    return value


def located_as_json(located: Any) -> str:
    """The answer of :func:`~patchwork.analysis.locate` as a JSON document (NaN → null)."""
    from patchwork.analysis.windows import locate_table

    table = locate_table(located)
    rows = [
        {key: _plain(value) for key, value in row.items()}
        for row in table.to_dict(orient="records")
    ]
    keys = (
        "study_name",
        "model_name",
        "metric",
        "estimator",
        "min_relative_gap",
        "confidence",
        "n_resamples",
        "seed",
    )
    header = {key: _plain(located.attrs.get(key)) for key in keys}
    header["floor_source"] = located.attrs.get("floor_source")
    coverage = SampleCoverage.from_attrs(located.attrs)
    if coverage is not None:
        header.update(
            n_used=coverage.used,
            n_total=coverage.total,
            samples=coverage.describe(),
            excluded={reason: list(ids) for reason, ids in coverage.excluded.items()},
        )
    return json.dumps({**header, "windows": rows}, indent=2, ensure_ascii=False)


def excluded_lines(coverage: SampleCoverage, shown: int = 3) -> list[str]:
    """One line per reason other than unfinished: the reason, the first ``shown`` ids, the count."""
    lines = []
    for reason, ids in coverage.excluded.items():
        if reason == UNFINISHED or not ids:
            continue
        more = ", …" if len(ids) > shown else ""
        lines.append(f"excluded, {reason}: {', '.join(ids[:shown])}{more} ({len(ids)})")
    return lines


def _plain(value: Any) -> Any:
    if value is None:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is not None and type(value).__name__ == "NAType":
        return None
    return value


def register(app: typer.Typer) -> None:
    """Add ``locate``, ``plot`` and ``compare`` to the ``patchwork`` command line."""
    from patchwork.cli.output import user_errors

    @app.command()
    @user_errors
    def locate(
        store: StoreArgument,
        output: Annotated[
            OutputFormat, typer.Option("--format", help="table or json.")
        ] = OutputFormat.table,
        model: ModelOption = None,
        metric: MetricOption = None,
        floor: Annotated[
            str,
            typer.Option(
                "--floor",
                help=(
                    "Smallest change worth reporting: auto (0.1 × the median clean–conflict gap "
                    "of the metric, i.e. 0.1 for normalized_effect), null (from the mismatched "
                    "patches, which the store must hold), or a number in units of the metric."
                ),
            ),
        ] = "auto",
        confidence: Annotated[float, typer.Option(help="Coverage of the intervals.")] = 0.95,
        resamples: ResamplesOption = 1000,
        seed: SeedOption = 0,
        estimator: EstimatorOption = None,
        min_gap: MinGapOption = None,
        no_verify: NoVerifyOption = False,
    ) -> None:
        """Print, per position group and component, the layer window where the effect changes
        (activation patching); for every other kind in the store, one line saying what to read
        instead. Exits 2 when nothing in the store can be located."""
        from patchwork.analysis.results import default_metric
        from patchwork.analysis.windows import locate as locate_windows

        results = open_store(store, model, verify=not no_verify)
        elsewhere = _not_locatable(results)
        if metric is None:
            metric, note = default_metric(results)
            elsewhere = [note, *elsewhere] if note else elsewhere
        located = locate_windows(
            results,
            metric=metric,
            floor=parse_floor(floor),
            confidence=confidence,
            n_resamples=resamples,
            seed=seed,
            estimator=estimator,
            min_relative_gap=min_gap,
        )
        if output is OutputFormat.json:
            typer.echo(located_as_json(located))
        else:
            _print_table(located)
        for line in elsewhere:  # on stderr under --format json, which keeps stdout one document
            typer.echo(line, err=output is OutputFormat.json)

    @app.command()
    @user_errors
    def compare(
        first: StoreArgument,
        second: Annotated[
            Path,
            typer.Argument(
                parser=given_path,
                help="A second results store (the same path for two of its models).",
            ),
        ],
        model: ModelOption = None,
        second_model: Annotated[
            str | None,
            typer.Option(
                "--second-model", help="Model group of the second store (default: --model)."
            ),
        ] = None,
        metric: MetricOption = None,
        resamples: ResamplesOption = 1000,
        seed: SeedOption = 0,
        estimator: EstimatorOption = None,
        min_gap: MinGapOption = None,
        no_verify: NoVerifyOption = False,
    ) -> None:
        """Print every method kind's summary of two stores (two models, or two runs of a study)
        side by side, and their difference (second − first) where rows match."""
        _compare(
            open_store(first, model, verify=not no_verify),
            open_store(second, second_model or model, verify=not no_verify),
            metric=metric,
            seed=seed,
            n_resamples=resamples,
            estimator=estimator,
            min_relative_gap=min_gap,
        )

    @app.command()
    @user_errors
    def plot(
        store: StoreArgument,
        out: Annotated[
            Path, typer.Option("--out", parser=given_path, help="Directory for the figures.")
        ],
        model: ModelOption = None,
        metric: MetricOption = None,
        image_format: Annotated[
            list[str] | None,
            typer.Option("--image-format", help="png, svg or pdf; repeat for several."),
        ] = None,
        resamples: ResamplesOption = 1000,
        seed: SeedOption = 0,
        estimator: EstimatorOption = None,
        min_gap: MinGapOption = None,
        no_verify: NoVerifyOption = False,
    ) -> None:
        """Write the figures of every method kind in a store (activation patching: the heatmap,
        per-component profiles and small multiples; see docs/methods.md for the others)."""
        from patchwork.analysis.plots import FIGURE_FORMATS, save_figure
        from patchwork.analysis.reports import reports_for
        from patchwork.analysis.results import check_choice, check_results
        from patchwork.cli.options import no_links, output_folder
        from patchwork.cli.output import written

        formats = image_format or ["png", "svg"]
        for extension in formats:
            check_choice("--image-format", extension, FIGURE_FORMATS)
        output_folder(out, "--out")  # before the store is read and the figures drawn
        results = open_store(store, model, verify=not no_verify)
        reports = reports_for(results)
        if not reports:
            check_results(results)  # says what the store lacks
        options = {
            "metric": metric,
            "seed": seed,
            "n_resamples": resamples,
            "estimator": estimator,
            "min_relative_gap": min_gap,
        }
        failed = []
        for report in reports:
            try:
                figures = report.figures(results, **options)
            except PatchworkError as error:
                failed.append(f"{report.kind}: {error}")
                continue
            for stem, figure in figures.items():
                no_links(out, "--out", [f"{stem}.{extension}" for extension in formats])
                with written(out, "--out"):  # a full disk: one line
                    paths = save_figure(figure, out, stem, formats)
                for path in paths:
                    typer.echo(str(path))
        if failed:
            raise AnalysisError(f"no figures for {'; '.join(failed)}")


def _compare(first: Any, second: Any, **options: Any) -> None:
    """Print :func:`~patchwork.analysis.compare.compare`: per kind, both summaries side by side
    and their difference below."""
    from rich.columns import Columns

    from patchwork.analysis.compare import compare, comparison_labels
    from patchwork.cli.output import console
    from patchwork.cli.summaries import summary_table

    labels = comparison_labels(first, second)
    for comparison in compare(first, second, **options):
        console.rule(comparison.kind)
        if comparison.note:
            console.print(f"[yellow]{comparison.note}[/]")
        sides = zip((comparison.first, comparison.second), labels, strict=True)
        tables = [summary_table(frame, label) for frame, label in sides if frame is not None]
        if tables:
            console.print(Columns(tables))
        if comparison.difference is not None:
            console.print(summary_table(comparison.difference))
        elif comparison.first is not None and comparison.second is not None:
            console.print("[dim]a ranking: compared side by side only[/]")


def _not_locatable(results: Any) -> list[str]:
    """One line per kind in ``results`` that ``locate`` does not read, saying what to use instead;
    raises :class:`AnalysisError` with those lines when no kind can be located."""
    from patchwork.analysis.reports import reports_for
    from patchwork.analysis.results import check_results

    reports = reports_for(results)
    lines = [report.locate_line() for report in reports if not report.locate_applies]
    if not any(report.locate_applies for report in reports):
        if not lines:
            check_results(results)  # says what the store lacks
        raise AnalysisError("; ".join(lines))
    return lines


def _number(value: float, signed: bool = False) -> str:
    if not math.isfinite(value):
        return ""
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def _estimator(attrs: Any) -> str:
    if attrs.get("metric") != "normalized_effect" or "estimator" not in attrs:
        return ""
    return f" ({str(attrs['estimator']).replace('_', ' ')})"


def _print_table(located: Any) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from patchwork.analysis.windows import locate_table

    table_data = locate_table(located)
    attrs = located.attrs
    coverage = SampleCoverage.from_attrs(attrs)
    samples = (
        f"{int(table_data['n_samples'].max())} samples"
        if coverage is None
        else coverage.describe(reasons=False)
    )
    title = (
        f"{attrs.get('study_name', 'study')} · {attrs.get('model_name', 'model')}, {samples}\n"
        f"where {attrs['metric']}{_estimator(attrs)} changes most across layers "
        f"({attrs['confidence']:.0%} CI, floor: {attrs['floor_source']}; "
        "null Δ: the same window under mismatched patches)"
    )
    if coverage is not None:
        title += "".join(f"\n{line}" for line in excluded_lines(coverage))
    notes = sorted({note for note in table_data["note"] if note})
    caption = "\n".join(f"[yellow]note: {note}[/]" for note in notes) or None
    table = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("group", "component", "window", "peak [CI]"):
        table.add_column(column, no_wrap=True)
    for column in ("change [CI]", "null Δ", "floor"):
        table.add_column(column, justify="right", no_wrap=True)
    for row in table_data.itertuples():
        if row.status != "located":
            table.add_row(
                row.position_group,
                row.component,
                f"[dim]{row.window}[/]",
                "",
                "",
                "",
                f"{row.floor:.2f}",
            )
            continue
        table.add_row(
            row.position_group,
            row.component,
            f"[bold]{row.window}[/]",
            f"{row.peak_layer} [{row.peak_layer_low}–{row.peak_layer_high}]",
            f"{row.change:+.2f} [{row.change_low:+.2f},{row.change_high:+.2f}]",
            _number(row.null_change, signed=True),
            f"{row.floor:.2f}",
        )
    Console().print(table)
