"""`kamengd config example`: the annotated example config, as installed with the package.

Its one source is config/kamengd.example.toml in the repository; setup.cfg
ships it as kamengd/config_example/kamengd.example.toml. It needs no
installation: nothing here reads a config or opens the database.
"""
from __future__ import annotations

import os
from importlib import resources

import click

from ..errors import KamengdError
from .group import cli, emit, json_option

EXAMPLE = ("config_example", "kamengd.example.toml")


def example_text() -> str:
    try:
        return resources.files("kamengd").joinpath(*EXAMPLE).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        raise KamengdError("the example config is not installed with this kamengd "
                           "(see config/kamengd.example.toml in the source)") from None


def write_new(path: str, text: str, force: bool) -> None:
    """Write `text` to `path` (mode 0600 when created); an existing file only with `force`."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        if os.path.isdir(path):
            raise KamengdError(f"{path} is a directory") from None
        raise KamengdError(f"{path} already exists (--force overwrites it)") from None
    except IsADirectoryError:
        raise KamengdError(f"{path} is a directory") from None
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


@cli.group("config")
def config_group():
    """The configuration file."""


@config_group.command("example")
@click.option("--output", metavar="FILE", help="Write it to FILE (mode 0600) instead of standard output.")
@click.option("--force", is_flag=True, help="With --output: overwrite FILE if it exists.")
@json_option
def config_example(output, force, as_json):
    """Print the annotated example config: every setting, its default and its variable."""
    text = example_text()
    if output is None:
        if force:
            raise click.UsageError("--force goes with --output FILE")
        if as_json:
            emit(True, {"example": text}, "")
        else:
            click.echo(text, nl=False)
        return
    write_new(output, text, force)
    emit(as_json, {"output": output, "bytes": len(text.encode())}, f"wrote the example config to {output}")
