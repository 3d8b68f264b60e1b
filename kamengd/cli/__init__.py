"""The `kamengd` command (CONTRACT.md §1).

Every failure a user can cause ends as one line on standard error and a
non-zero exit; a traceback means a bug.
"""
from __future__ import annotations

import sys

import click
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from ..database import is_busy
from ..errors import KamengdError
from .group import cli   # it loads each command's module when the command runs


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _database_message(exc: SQLAlchemyError) -> str:
    if is_busy(exc):
        # The first busy error of the chain says why (a deadlock's loser then fails to roll
        # back to its savepoint, and that second error is the one raised).
        while isinstance(exc.__context__, DBAPIError) and is_busy(exc.__context__):
            exc = exc.__context__
    orig = getattr(exc, "orig", None) if isinstance(exc, DBAPIError) else None
    detail = orig.args[-1] if orig is not None and orig.args else (orig or exc.__class__.__name__)
    if is_busy(exc):
        return f"the database is busy ({detail}); nothing was changed: run the command again"
    return f"database error: {detail}"


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="kamengd", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("kamengd: aborted", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        click.echo(f"kamengd: {_one_line(exc.format_message())}", err=True)
        sys.exit(exc.exit_code)
    except KamengdError as exc:
        click.echo(f"kamengd: {_one_line(exc.message)}", err=True)
        sys.exit(1)
    except SQLAlchemyError as exc:
        click.echo(f"kamengd: {_one_line(_database_message(exc))}", err=True)
        sys.exit(1)
    except OSError as exc:  # a file the user named: unreadable, unwritable, not there
        where = f": {exc.filename}" if exc.filename else ""
        click.echo(f"kamengd: {_one_line(exc.strerror or str(exc))}{where}", err=True)
        sys.exit(1)
    except UnicodeError:
        click.echo("kamengd: an argument or file name is not valid UTF-8 text", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("kamengd: interrupted", err=True)
        sys.exit(130)
    sys.exit(0)
