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
from ..agents.services import get_agent
from ..inventory import pools
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


@keys.command("pool")
@click.option("--product", "product_id", type=PRODUCT_ID, required=True, metavar="ID")
@click.option("--agent", "username", required=True, metavar="NAME")
@click.option("--count", type=click.IntRange(min=1), required=True, help="Keys to put aside, oldest first.")
@json_option
@with_app
def keys_pool(product_id, username, count, as_json):
    """Put COUNT available keys of the product in the agent's stock pool (库存池): sold only through
    that agent (its API orders, its sub-station, its invite links), all or nothing (audited)."""
    agent = get_agent(db.session, username)
    moved = pools.pool_keys(db.session, product_id=product_id, agent=agent, count=count, actor=cli_actor())
    emit(as_json, {"product_id": product_id, "agent": agent.username, "pooled": moved},
         f"{moved} keys of product {product_id} are in the pool of {agent.username}")


@keys.command("unpool")
@click.option("--product", "product_id", type=PRODUCT_ID, required=True, metavar="ID")
@click.option("--agent", "username", required=True, metavar="NAME")
@click.option("--count", type=click.IntRange(min=1), help="Keys to give back (default: the whole pool).")
@json_option
@with_app
def keys_unpool(product_id, username, count, as_json):
    """Give keys of the agent's pool back to the shop's stock (audited)."""
    agent = get_agent(db.session, username)
    moved = pools.unpool_keys(db.session, product_id=product_id, agent=agent, count=count, actor=cli_actor())
    emit(as_json, {"product_id": product_id, "agent": agent.username, "returned": moved},
         f"{moved} keys of product {product_id} are back in the shop's stock")


@keys.command("pools")
@json_option
@with_app(readonly=True)
def keys_pools(as_json):
    """Every stock pool that holds keys: agent, product, keys."""
    rows = pools.pools(db.session)
    if as_json:
        emit(True, {"pools": [{"agent": a, "product_id": p, "product": n, "keys": c} for a, p, n, c in rows]}, "")
        return
    for agent, product_id, name, count in rows:
        click.echo(f"{agent:<32} {product_id:>6}  {name[:40]:<40} {count:>8}")
