"""The `frontdesk` command: one typer app. Run commands (shell, gateway, worker) live here; each
admin command group lives next to what it reads and is mounted below."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from frontdesk.clitools import err, fail, run, settings
from frontdesk.engine.cli import queue
from frontdesk.engine.knowledge.cli import kb
from frontdesk.engine.replay import replay_command
from frontdesk.errors import FrontdeskError
from frontdesk.storage.cli import register as register_log_commands

app = typer.Typer(
    name="frontdesk",
    help="LLM chat-bots on messaging platforms, and the admin tools for their logs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.command()
def shell(ctx: typer.Context) -> None:
    """Chat on the terminal through the whole pipeline (gateway, queue, worker, engine, storage).

    Without FRONTDESK_REDIS_URL everything runs in this process on the embedded default: SQLite,
    an in-process queue and llama.cpp with the bundled SmolLM2. With it, a `frontdesk worker`
    elsewhere answers. /reset starts a new conversation, /quit leaves.
    """
    from frontdesk.runtime import run_shell

    cfg = settings(ctx)
    if cfg.embedded and _interactive():
        banner = f"frontdesk shell · {cfg.engine} · {cfg.model_path()} · /reset, /quit"
        err.print(Text(banner, style="dim"))
    run(run_shell(cfg))


@app.command()
def worker(ctx: typer.Context) -> None:
    """Answer turns from Redis until SIGTERM (needs FRONTDESK_REDIS_URL)."""
    from frontdesk.runtime import run_worker

    run(run_worker(settings(ctx)))


@app.command()
def gateway(ctx: typer.Context) -> None:
    """Run the configured platform channels until SIGTERM (needs FRONTDESK_REDIS_URL)."""
    from frontdesk.bots import build_channels
    from frontdesk.runtime import run_gateway

    cfg = settings(ctx)
    run(run_gateway(cfg, channels=build_channels(cfg)))


model = typer.Typer(help="Prepare models for the engines.", no_args_is_help=True)
app.add_typer(model, name="model")


@model.command("export-hf")
def export_hf(
    out: Annotated[
        Path | None, typer.Option("--out", help="Where (default: the cache vllm reads).")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Export again even if it is there.")
    ] = False,
) -> None:
    """Convert the bundled SmolLM2 GGUF to a Hugging Face directory (for vLLM); prints its path."""
    from frontdesk.model import export_hf as export
    from frontdesk.settings import exported_model_dir

    try:
        path, _made = export(out or exported_model_dir(), force=force)
    except FrontdeskError as exc:
        raise fail(str(exc), exc.exit_code) from None
    print(path)


@app.command()
def doctor(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Check the configured engine, Redis, the database and the handoff desk, and say what was
    found."""
    from rich.table import Table

    from frontdesk.clitools import out, print_json
    from frontdesk.doctor import diagnose

    checks = run(diagnose(settings(ctx)))
    if as_json:
        print_json(checks)
    else:
        table = Table("", "part", "found", "s")
        for c in checks:
            mark = "[green]ok[/]" if c.ok else "[bold red]failed[/]"
            table.add_row(mark, c.part, Text(c.detail), f"{c.seconds:.1f}")
        out.print(table)
    if not all(c.ok for c in checks):
        raise typer.Exit(1)


@app.callback()
def _root(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at INFO level.")] = False,
) -> None:
    if verbose:
        settings(ctx)
        logging.getLogger().setLevel(logging.INFO)


register_log_commands(app)  # after the run commands, so --help lists those first
app.add_typer(queue, name="queue")
app.add_typer(kb, name="kb")
app.command("replay")(replay_command)


def _interactive() -> bool:
    return sys.stdin.isatty()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
