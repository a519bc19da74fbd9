"""``patchwork testbed train / eval``: train the embedded model, print its behaviour table."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from patchwork.cli.options import MAX_SEED, given_path
from patchwork.errors import PatchworkError

NUM_LAYERS, NUM_HEADS = 8, 4
#: Most training steps a stage may take (the shipped recipe takes 150 + 300).
MAX_STEPS = 1_000_000


def register(app: typer.Typer) -> None:
    """Add the ``testbed`` sub-command group to the ``patchwork`` app."""
    group = typer.Typer(
        name="testbed",
        help="The embedded default model (a small Qwen2.5-Omni).",
        no_args_is_help=True,
    )
    from patchwork.cli.output import user_errors

    group.command("train")(user_errors(train_command))
    group.command("eval")(user_errors(eval_command))
    app.add_typer(group, name="testbed")


def train_command(
    out: Annotated[
        Path, typer.Option(parser=given_path, help="Directory for the stage-2 checkpoint.")
    ],
    seed: Annotated[
        int, typer.Option(min=0, max=MAX_SEED, help="Seed of weights, media banks and batches.")
    ] = 0,
    audio_supervision: Annotated[
        float,
        typer.Option(help="Fraction of stage-2 clips that conflict, labelled with the sound."),
    ] = 0.0,
    picture_supervision: Annotated[
        float | None,
        typer.Option(
            help="Fraction of stage-2 clips that conflict, labelled with the picture's sound: "
            "vision dominance planted rather than left to emerge [default: 0.1; 0 with "
            "--fixed-steps]."
        ),
    ] = None,
    audio_first_steps: Annotated[
        int | None,
        typer.Option(
            help="First stage-2 steps with 60% audio-only clips and no conflicts, so that the "
            "model learns to hear first [default: 300; 0 with --fixed-steps]."
        ),
    ] = None,
    video_access_layers: Annotated[
        str | None,
        typer.Option(
            help="FIRST:LAST or FIRST-LAST (inclusive): the only decoder layers where text "
            "reads video; several spans apart, comma-separated (1:1,5:6), plant separated windows."
        ),
    ] = None,
    audio_access_layers: Annotated[
        str | None,
        typer.Option(
            help="FIRST:LAST or FIRST-LAST (inclusive): the only decoder layers where text "
            "reads audio."
        ),
    ] = None,
    video_access_heads: Annotated[
        str | None,
        typer.Option(
            help="LAYER:HEAD,... : the only query heads through which the answer reads video "
            "(other text positions never do); excludes --video-access-layers."
        ),
    ] = None,
    stage1_steps: Annotated[
        int | None, typer.Option(help="Stage-1 (vision-language) steps [default: 150].")
    ] = None,
    stage2_steps: Annotated[
        int | None,
        typer.Option(
            help="Stage-2 (audio-visual) steps: the cap when stopping at the targets "
            "[default: 3000], the count with --fixed-steps [default: 300]."
        ),
    ] = None,
    fixed_steps: Annotated[
        bool,
        typer.Option(
            "--fixed-steps",
            help="Train exactly --stage2-steps (the shipped checkpoints' recipe) instead of "
            "stopping at the first validation check that meets the targets.",
        ),
    ] = False,
    time_budget: Annotated[
        float | None,
        typer.Option(
            help="Also give up stopping at the targets after this many seconds of the whole run "
            "(wall clock: the result then depends on the machine's load) [default: none, only "
            "the --stage2-steps cap]."
        ),
    ] = None,
    check_every: Annotated[int, typer.Option(help="Stage-2 steps between validation checks.")] = 50,
    batch_size: Annotated[int, typer.Option(help="Clips per step.")] = 32,
    base_out: Annotated[
        Path | None, typer.Option(parser=given_path, help="Also write the stage-1 checkpoint here.")
    ] = None,
    from_base: Annotated[
        Path | None,
        typer.Option(
            parser=given_path, help="Skip stage 1: start stage 2 from this stage-1 checkpoint."
        ),
    ] = None,
    threads: Annotated[
        int, typer.Option(help="torch threads (results depend on it; 1 is fastest on 2 cores).")
    ] = 1,
    audio_in_video: Annotated[
        bool,
        typer.Option(
            "--audio-in-video",
            help="Lay every clip out as a video whose sound is interleaved with its frames "
            "(Qwen2.5-Omni's use_audio_in_video); studies on the checkpoint follow it.",
        ),
    ] = False,
) -> None:
    """Train the testbed model (stage 1 + stage 2) and write safetensors checkpoints.

    The default recipe makes an organism for any planted window: stage 2 first teaches hearing
    (--audio-first-steps), plants vision dominance (--picture-supervision) and stops at the first
    validation check where congruent "hear" accuracy >= 0.98, audio-only >= 0.93 and the
    picture's share of conflicts >= 0.63 (the targets + 0.03); without that by the step cap (or
    the --time-budget, if given) it fails, writing no stage-2 checkpoint. --fixed-steps is the
    shipped checkpoints' recipe (dominance left to emerge, exactly --stage2-steps)."""
    import torch

    from patchwork.cli.output import written
    from patchwork.testbed import windows
    from patchwork.testbed.train import TrainConfig, train

    if not 0.0 <= audio_supervision <= 0.6:
        raise PatchworkError(
            f"--audio-supervision: expected a fraction in [0, 0.6], got {audio_supervision}"
        )
    if picture_supervision is None:
        picture_supervision = 0.0 if fixed_steps else 0.1
    if audio_first_steps is None:
        audio_first_steps = 0 if fixed_steps else 300
    if audio_first_steps < 0:
        raise PatchworkError(f"--audio-first-steps: expected 0 or more, got {audio_first_steps}")
    if not 0.0 <= picture_supervision <= 0.6:
        raise PatchworkError(
            f"--picture-supervision: expected a fraction in [0, 0.6], got {picture_supervision}"
        )
    if from_base is not None:
        for option, given in (("--stage1-steps", stage1_steps), ("--base-out", base_out)):
            if given is not None:
                raise PatchworkError(f"{option}: --from-base skips stage 1; leave it out")
    stage1_steps = 150 if stage1_steps is None else stage1_steps
    if stage2_steps is None:
        stage2_steps = 300 if fixed_steps else 3000
    for option, value, largest in (
        ("--stage1-steps", stage1_steps, MAX_STEPS),
        ("--stage2-steps", stage2_steps, MAX_STEPS),
        ("--batch-size", batch_size, 4096),
        ("--threads", threads, 1024),
        ("--check-every", check_every, MAX_STEPS),
    ):
        if not 1 <= value <= largest:
            raise PatchworkError(f"{option}: expected an integer in [1, {largest}], got {value}")
    if time_budget is not None and not 0 < time_budget <= 7 * 24 * 3600:  # NaN fails too
        raise PatchworkError(f"--time-budget: expected seconds in (0, 604800], got {time_budget}")
    if video_access_heads and video_access_layers:
        raise PatchworkError(
            "--video-access-heads: give either it or --video-access-layers, not both"
        )
    if from_base is not None and not (from_base / "patchwork_testbed.json").is_file():
        raise PatchworkError(f"--from-base: {from_base} is not a testbed checkpoint")
    _check_outputs(out, base_out, from_base)
    config = TrainConfig(
        seed=seed,
        stage1_steps=stage1_steps,
        stage2_steps=stage2_steps,
        batch_size=batch_size,
        audio_supervision=audio_supervision,
        picture_supervision=picture_supervision,
        audio_first_steps=audio_first_steps,
        video_access_layers=windows.parse_layer_span(
            video_access_layers, NUM_LAYERS, "--video-access-layers"
        ),
        audio_access_layers=windows.parse_layer_span(
            audio_access_layers, NUM_LAYERS, "--audio-access-layers"
        ),
        video_access_heads=windows.parse_heads(
            video_access_heads, NUM_LAYERS, NUM_HEADS, "--video-access-heads"
        ),
        stop_at_targets=not fixed_steps,
        check_every=check_every,
        time_budget=None if fixed_steps else time_budget,
        audio_in_video=audio_in_video,
    )
    torch.set_num_threads(threads)
    command = "patchwork testbed " + " ".join(shlex.quote(arg) for arg in sys.argv[2:])
    with written(out, "--out"):  # a full disk when the checkpoint is saved: one line
        path = train(
            out, config, base_out=base_out, from_base=from_base, command=command, log=typer.echo
        )
    typer.echo(f"wrote {path}")


def _check_outputs(out: Path, base_out: Path | None, from_base: Path | None) -> None:
    """Before training starts: the folders it writes can be written, the base it starts from is
    a whole testbed checkpoint (every file read and checked, no weights loaded)."""
    from patchwork.cli.options import no_links, output_folder
    from patchwork.testbed.model import open_checkpoint

    no_links(output_folder(out, "--out"), "--out")  # a checkpoint folder: every file in it
    if base_out is not None:
        no_links(output_folder(base_out, "--base-out"), "--base-out")
        if base_out.resolve() == out.resolve():  # stage 2 would replace stage 1 unsaid
            raise PatchworkError(f"--base-out {base_out} is the --out folder; give each its own")
    if from_base is not None:
        try:
            open_checkpoint(from_base)
        except PatchworkError as error:
            raise PatchworkError(f"--from-base {from_base}: {error}") from None


def eval_command(
    checkpoint: Annotated[
        str,
        typer.Argument(
            help="A checkpoint directory or a shipped name: "
            "testbed, testbed-base, testbed-windowed, testbed-heads."
        ),
    ],
    samples: Annotated[
        int, typer.Option(min=1, max=100_000, help="Held-out samples per question.")
    ] = 100,
    seed: Annotated[
        int, typer.Option(min=0, max=MAX_SEED, help="Seed of the held-out samples.")
    ] = 20_000,
    probes: Annotated[bool, typer.Option(help="Also fit the per-layer linear probes.")] = False,
    threads: Annotated[int, typer.Option(min=1, max=1024, help="torch threads.")] = 1,
) -> None:
    """Print the behaviour table (and optionally probe accuracies) of a testbed checkpoint."""
    import torch
    from rich.console import Console
    from rich.table import Table

    from patchwork.analysis.probes import probe_accuracy
    from patchwork.testbed import evaluate, load
    from patchwork.testbed.model import KNOWN_CHECKPOINTS, checkpoint_path

    if samples < 1:
        raise PatchworkError(f"--samples: expected a positive integer, got {samples}")
    torch.set_num_threads(threads)
    directory = checkpoint_path(checkpoint) if checkpoint in KNOWN_CHECKPOINTS else Path(checkpoint)
    model, _ = load(directory)
    table = evaluate.behaviour_table(model, directory, n=samples, seed=seed)
    console = Console()
    console.print(_rich_table(Table, f"behaviour of {directory}", table))
    if probes:
        console.print(
            _rich_table(
                Table,
                "probe accuracy, sound category (conflicting clips)",
                evaluate.probe_table(model, directory, probe_accuracy),
            )
        )


def _rich_table(table_class, title: str, frame) -> object:
    table = table_class(title=title)
    for column in frame.columns:
        justify = "left" if frame[column].dtype == object else "right"
        table.add_column(str(column), justify=justify)
    for row in frame.itertuples(index=False):
        table.add_row(*(f"{v:.2f}" if isinstance(v, float) else str(v) for v in row))
    return table
