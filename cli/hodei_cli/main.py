"""The ``hodei`` command: every error is one line on stderr and a non-zero exit."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

# typer (>= 0.29, pinned in pyproject) carries its own copy of click; its usage errors are
# these, whether or not click itself is installed too.
from typer._click.exceptions import ClickException

from hodei_cli import admin, auth, debug, dev, jobs
from hodei_common import tracing
from hodei_common.errors import HodeiError

app = typer.Typer(
    name="hodei",
    help="Hodei Jobs: run a shell command on an ephemeral worker and never lose its output.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.add_typer(jobs.app, name="job")
app.add_typer(admin.worker_app, name="worker")
app.add_typer(admin.provider_app, name="provider")
app.add_typer(dev.app, name="dev")
app.add_typer(auth.app, name="auth")
app.add_typer(debug.app, name="debug")
app.command("migrate")(admin.migrate_command)
app.command("service")(admin.service_command)


@app.callback()
def _options(
    creds: Annotated[Path | None, typer.Option(
        "--creds", help="NATS credentials to act with (default: HODEI_CREDS, else the "
        "embedded platform's)", dir_okay=False)] = None,
) -> None:
    if creds is not None:  # every command's settings read it from the environment
        os.environ["HODEI_CREDS"] = str(creds)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; usage mistakes and platform errors become one ``error:`` line."""
    # Library warnings (a NATS disconnect at close) are not for the CLI's user.
    logging.basicConfig(level=os.environ.get("HODEI_LOG_LEVEL", "ERROR").upper())
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="hodei", standalone_mode=False)
    except typer.Exit as e:
        code = e.exit_code
    except ClickException as e:
        _fail(e.format_message(), e.exit_code)
    except typer.Abort:
        _fail("interrupted", 130)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except HodeiError as e:
        _fail(str(e), 1)
    finally:
        # The spans of this command (and of the embedded platform's services) leave now.
        tracing.shutdown_tracing()
    raise SystemExit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int) -> None:
    first_line = message.strip().splitlines()[0] if message.strip() else "failed"
    print(f"error: {first_line}", file=sys.stderr)
    raise SystemExit(code)
