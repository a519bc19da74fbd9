"""``patchwork pairs``: a counterfactual manifest from a folder (or CSV) of labelled clips."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from patchwork.cli.options import MAX_SEED, given_path
from patchwork.errors import PatchworkError

if TYPE_CHECKING:
    from patchwork.data.conventions import Convention


def register(app: typer.Typer) -> None:
    """Add the ``pairs`` command to the ``patchwork`` app."""
    from patchwork.cli.output import user_errors

    app.command("pairs")(user_errors(pairs_command))


def pairs_command(
    source: Annotated[
        Path,
        typer.Argument(
            parser=given_path, help="A folder with one sub-folder of clips per label, or a CSV."
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", parser=given_path, help="The manifest to write (*.jsonl).")
    ],
    words: Annotated[
        Path | None,
        typer.Option(
            parser=given_path,
            help="Label → answer word, YAML (label: word) or CSV (label,word).",
        ),
    ] = None,
    seed: Annotated[
        int,
        typer.Option(min=0, max=MAX_SEED, help="Seed of the clips drawn and the pictures paired."),
    ] = 0,
    per_label: Annotated[
        int | None,
        typer.Option(min=1, help="Samples per label [default: as many as the rarest label has]."),
    ] = None,
    study: Annotated[
        Path | None,
        typer.Option(
            parser=given_path,
            help="Check answer words and token layouts against this study's model.",
        ),
    ] = None,
    checkpoint: Annotated[
        str | None,
        typer.Option(help="Check against this checkpoint directory (or 'testbed') instead."),
    ] = None,
    family: Annotated[
        str | None, typer.Option(help="The checkpoint's family [default: from its config.json].")
    ] = None,
    frame_size: Annotated[
        str | None,
        typer.Option(
            metavar="HEIGHTxWIDTH",
            help="Resize every frame to this, e.g. 252x448 [default: the most common size].",
        ),
    ] = None,
    seconds: Annotated[
        float | None,
        typer.Option(help="Cut every run to this length [default: the shortest clip's]."),
    ] = None,
    fps: Annotated[
        float | None, typer.Option(help="Frames per second sampled [default: the manifest's].")
    ] = None,
    min_seconds: Annotated[float, typer.Option(help="Leave out clips shorter than this.")] = 1.0,
    audio_in_video: Annotated[
        bool,
        typer.Option(
            "--audio-in-video", help="Interleave each run's sound with its frames (Qwen omni)."
        ),
    ] = False,
) -> None:
    """Write a counterfactual manifest: each clip's sound with its own picture (clean) and
    under a clip of another label (conflict); one frame size and length for every row; balanced
    and seeded; every clip left out is listed with its reason."""
    from patchwork.cli.options import no_links, output_folder
    from patchwork.cli.output import console
    from patchwork.loading.pairs import checkpoint_model, pair_clips

    if study is not None and checkpoint is not None:
        raise PatchworkError("give --study or --checkpoint, not both")
    if family is not None and checkpoint is None:
        raise PatchworkError("--family goes with --checkpoint")
    output_folder(out.parent, "--out")  # before the clips are read: a folder it can write in
    no_links(out.parent, "--out", [out.name, out.name + ".partial"])  # the manifest, its draft
    limits: dict[str, float] = {}
    convention: Convention = "model_card"
    loaded = None
    if study is not None:
        from patchwork.loading.model import load_model
        from patchwork.study import load_study

        loaded_study = load_study(study)
        loaded = load_model(
            loaded_study.model, loaded_study.where("model"), weights=False, config_only=True
        )
        limits = {
            "max_seconds": loaded_study.dataset.max_seconds,
            "max_side": loaded_study.dataset.max_frame_side,
        }
        convention = loaded_study.inputs.convention
    elif checkpoint is not None:
        loaded = checkpoint_model(checkpoint, family)
    report = pair_clips(
        source,
        out,
        words=words,
        seed=seed,
        per_label=per_label,
        loaded=loaded,
        frame_size=_frame_size(frame_size),
        seconds=seconds,
        fps=fps,
        min_seconds=min_seconds,
        audio_in_video=audio_in_video,
        convention=convention,
        max_seconds=limits.get("max_seconds", 600.0),
        max_side=int(limits.get("max_side", 4096)),
    )
    for line in report.lines():
        console.print(line, highlight=False, markup=False)
    console.print(
        f"next: set dataset.manifest to {out} in a study and run patchwork validate STUDY",
        highlight=False,
        markup=False,
    )


def _frame_size(text: str | None) -> tuple[int, int] | None:
    """``HEIGHTxWIDTH`` as (height, width)."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*[x×,]\s*(\d+)\s*", text)
    if not match or not all(int(side) > 0 for side in match.groups()):
        raise PatchworkError(f"--frame-size: expected HEIGHTxWIDTH, e.g. 252x448; got {text!r}")
    return int(match[1]), int(match[2])
