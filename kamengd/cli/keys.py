from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import click

from ..context import get_config, get_vault
from ..audit.services import cli_actor
from ..errors import KamengdError
from ..extensions import db
from ..inventory.services import EXPORT_STATUSES, export_keys, import_keys
from .group import cli, emit, json_option, with_app


PRODUCT_ID = click.IntRange(min=1, max=2**31 - 1)


@cli.group()
def keys():
    """Card keys (卡密)."""


@contextmanager
def open_seekable(path: str):
    """The file itself, or a pipe (stdin, /dev/stdin, <(...)) spooled to a
    temporary file: encoding detection reads the file twice."""
    if path == "-":
        source = sys.stdin.buffer
    else:
        try:
            source = open(path, "rb")
        except OSError as exc:
            raise KamengdError(f"cannot open {path}: {exc.strerror}") from None
    with source if path != "-" else contextlib.nullcontext(source):
        if source.seekable():
            yield source
            return
        with tempfile.TemporaryFile() as tmp:
            shutil.copyfileobj(source, tmp, 1 << 20)
            tmp.seek(0)
            yield tmp


@keys.command("import")
@click.option("--product", "product_id", type=PRODUCT_ID, required=True, metavar="ID")
@click.argument("file", metavar="FILE")
@click.option("--encoding", help="Force an encoding (default: detect UTF-8/UTF-16 BOM/GB18030).")
@json_option
@with_app
def keys_import(product_id, file, encoding, as_json):
    """Import one key per line from FILE (- for stdin); all or nothing."""
    cfg = get_config().inventory
    with open_seekable(file) as fh:
        result = import_keys(db.session, get_vault(), product_id=product_id, fh=fh, actor=cli_actor(),
                             encoding=encoding, max_key_length=cfg.max_key_length,
                             batch_size=cfg.import_batch_size)
    emit(as_json, result.as_dict(),
         f"imported {result.imported}, duplicates {result.duplicates}, blank {result.blank} "
         f"({result.encoding})")


@keys.command("export")
@click.option("--product", "product_id", type=PRODUCT_ID, required=True, metavar="ID")
@click.option("--output", required=True, metavar="FILE")
@click.option("--status", type=click.Choice(EXPORT_STATUSES), default="available", show_default=True)
@json_option
@click.pass_obj
def keys_export(obj, product_id, output, status, as_json):
    """Write keys in plain text to FILE (mode 0600); audited."""
    with obj.app.app_context():
        try:
            result = export_keys(db.session, get_vault(), product_id=product_id, output=Path(output),
                                 actor=cli_actor(), status=status)
        except BaseException:
            db.session.rollback()
            raise
        try:
            db.session.commit()   # the export's one commit: the file appears only once its audit entry is stored
        except BaseException:
            result.discard()
            raise
        result.finish()
    emit(as_json, {"exported": result.count, "output": str(result.output), "status": status},
         f"exported {result.count} {status} keys to {result.output}")
