"""The ``patchwork`` command line: thin wrappers over the library, one readable line per error."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="patchwork",
    help="Causal interventions on audio-visual LLMs: where does the audio evidence get lost?",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register_subcommands() -> None:
    """Commands that live beside the code they drive (analysis, testbed) add themselves here."""
    from patchwork.analysis import commands as analysis_commands
    from patchwork.testbed import commands as testbed_commands

    analysis_commands.register(app)
    testbed_commands.register(app)


def main() -> None:
    _register_subcommands()
    app()
