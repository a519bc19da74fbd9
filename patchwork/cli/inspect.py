"""``patchwork inspect``: what one run of one sample feeds the model, as files and a layout."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from patchwork.cli.options import given_path


def register(app: typer.Typer) -> None:
    """Add the ``inspect`` command to the ``patchwork`` app."""
    from patchwork.cli.output import user_errors

    app.command("inspect")(user_errors(inspect_command))


def inspect_command(
    study: Annotated[Path, typer.Argument(parser=given_path, help="A study YAML file.")],
    sample: Annotated[str, typer.Option("--sample", help="The sample's id.")],
    out: Annotated[
        Path, typer.Option("--out", parser=given_path, help="Folder for the files written.")
    ],
    run: Annotated[
        str | None, typer.Option("--run", help="The run [default: the sample's first].")
    ] = None,
    assignments: Annotated[
        list[str] | None,
        typer.Option(
            "--set", metavar="KEY.PATH=VALUE", help="Override a study field, as for `run`."
        ),
    ] = None,
) -> None:
    """Write the tensors one run of a sample passes to the model's forward
    (inputs.safetensors, under the processor's key names), the frames it is shown (frames.png)
    and the log-mel it hears (audio.png), and print its token layout. Reads no weights."""
    from rich.table import Table

    from patchwork.analysis.input_figures import write_inspection
    from patchwork.cli.options import no_links, output_folder
    from patchwork.cli.output import console
    from patchwork.engine.inspect import inspect_inputs
    from patchwork.study import load_study

    output_folder(out, "--out")  # before the inputs are built
    no_links(out, "--out", ["inputs.safetensors", "frames.png", "audio.png"])
    inputs = inspect_inputs(load_study(study, assignments or []), sample, run)
    for line in inputs.describe():
        console.print(line, highlight=False, markup=False)
    table = Table("tensor", "shape", "dtype", title="forward arguments")
    for key, tensor in inputs.tensors.items():
        table.add_row(key, " × ".join(map(str, tensor.shape)), str(tensor.dtype).split(".")[-1])
    console.print(table)
    written = write_inspection(inputs, out)
    paths = ", ".join(str(path) for path in written.values())
    console.print(f"wrote {paths}", highlight=False, markup=False)
