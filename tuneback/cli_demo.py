"""``tuneback demo``: play a day of production on the embedded defaults and show the loop work."""

from __future__ import annotations

from pathlib import Path

import click

from feedback.exceptions import TunebackError


@click.command("demo")
@click.option(
    "--scenario",
    type=click.Choice(["extraction", "style"]),
    default="extraction",
    show_default=True,
    help="extraction: support messages -> JSON record; style: Acme Bank's house style.",
)
@click.option("--messages", type=int, default=40, show_default=True, help="The day's messages.")
@click.option(
    "--heldout", type=int, default=8, show_default=True, help="Questions shown before/after."
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep everything here (default: a fresh temporary folder, removed at the end).",
)
@click.option(
    "--base-model", help="Local HF model folder or GGUF (default: TUNEBACK_BASE_MODEL or SmolLM2)."
)
@click.option("--port", type=int, help="Port for the demo's server (default: a free one).")
@click.option("--keep", is_flag=True, help="Keep the temporary data dir.")
def demo(**options) -> None:
    """Play a day of production: chats, votes, corrections, retrain, hot-swap, before/after."""
    from tuneback.demo import DemoOptions, run_demo

    try:
        run_demo(DemoOptions(**options), echo=click.echo)
    except TunebackError as error:
        raise click.ClickException(str(error)) from None


COMMANDS = (demo,)
