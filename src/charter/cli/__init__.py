"""The `charter` command line. Each command group lives in its own module beside this one."""

from __future__ import annotations

import functools
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import typer

try:  # typer >= 0.25 vendors click
    from typer import _click as click
except ImportError:  # pragma: no cover
    import click  # type: ignore[no-redef]
from rich.console import Console

from charter.errors import CharterError, UsageError

app = typer.Typer(
    name="charter",
    help="Constitutional classifiers, red teaming and misuse monitoring for LLM deployments.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
err = Console(stderr=True, soft_wrap=True)


def check_utf8(value: str | None, hint: str) -> None:
    """Refuse a command-line value that is not UTF-8: such bytes reach argv as lone surrogates, which
    crashed later as a traceback."""
    if value is not None and any("\ud800" <= c <= "\udfff" for c in value):
        raise typer.BadParameter("not valid UTF-8 (check the terminal's encoding)", param_hint=hint)


def _version(value: bool) -> None:
    if value:
        from charter import __version__

        typer.echo(f"charter {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True,
                                       help="Print Charter's version and exit.")) -> None:
    """Constitutional classifiers, red teaming and misuse monitoring for LLM deployments."""


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM (``docker stop``, systemd, ``kill``) stops a long run as Ctrl-C does,
    so it writes what has finished and closes its journal instead of dying mid-write. Only the main
    thread can set a handler; elsewhere the block changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    from charter.fileio import INTERRUPTED

    def interrupt(signum: int, frame: object) -> None:
        INTERRUPTED.set()
        raise KeyboardInterrupt

    INTERRUPTED.clear()
    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def interruptible(command: Callable[..., None]) -> Callable[..., None]:
    """A command that SIGTERM stops as Ctrl-C does: its temporary files are removed and no half-written
    file is left behind (exit 130). Put it under ``@app.command``."""

    @functools.wraps(command)
    def run(*args: object, **kwargs: object) -> None:
        with sigterm_as_interrupt():
            command(*args, **kwargs)

    return run


def _register() -> None:
    # imported here so that `charter --help` stays fast and modules can import `app`
    from charter.cli import (  # noqa: F401
        constitution_cmd, data_cmd, demo_cmd, guard_cmd, redteam_cmd, serve_cmd, transforms_cmd,
    )
    from charter.cli import safety_case_cmd  # noqa: F401
    from charter.cli import monitor_cmd  # noqa: F401
    from charter.cli import monitor_alerts_cmd  # noqa: F401
    from charter.cli import eval_cmd  # noqa: F401
    from charter.cli import eval_guard_cmd  # noqa: F401
    from charter.cli import wellbeing_cmd  # noqa: F401
    from charter.cli import dashboard_cmd  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    _register()
    try:
        rv = app(args=argv, standalone_mode=False, prog_name="charter")
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        err.print("charter: aborted")
        return 130
    except click.exceptions.NoArgsIsHelpError as e:
        err.print(e.format_message(), highlight=False, markup=False)
        return 2
    except click.exceptions.UsageError as e:
        # one line, not click's three-line block
        cmd = e.ctx.command_path if e.ctx else "charter"
        err.print(f"{cmd}: error: {e.format_message()} (see '{cmd} --help')", highlight=False, markup=False)
        return 2
    except click.exceptions.ClickException as e:
        err.print(f"charter: error: {e.format_message()}", highlight=False, markup=False)
        return e.exit_code
    except UsageError as e:  # a malformed option value found past click's own checks
        err.print(f"charter: error: {e} (see 'charter --help')", highlight=False, markup=False)
        return 2
    except CharterError as e:
        err.print(f"charter: error: {e}", highlight=False, markup=False)
        return 1
    except OSError as e:  # a path the user gave cannot be read or written (exists, not a directory, ...)
        where = f"{e.filename}: " if e.filename else ""
        err.print(f"charter: error: {where}{e.strerror or e}", highlight=False, markup=False)
        return 1
    return rv if isinstance(rv, int) else 0  # typer.Exit(n) comes back as n


def run() -> None:  # pragma: no cover - console-script shim
    sys.exit(main())
