from __future__ import annotations

import json

import click
import sqlalchemy as sa

from ..context import get_vault
from ..audit.services import cli_actor
from ..errors import InvalidRequest, NotFound
from ..extensions import db
from ..payments.models import PaymentChannel
from ..payments.services import CHANNEL_TYPES, add_channel, remove_channel, set_channel_enabled
from .group import cli, emit, json_option, with_app


@cli.group()
def channel():
    """Payment channels."""


def parse_options(pairs: tuple[str, ...]) -> dict[str, str]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidRequest(f"--option {pair!r}: expected KEY=VALUE")
        if key.strip() in options:
            raise InvalidRequest(f"--option {key.strip()}: given twice")
        options[key.strip()] = value
    return options


@channel.command("add")
@click.option("--type", "channel_type", type=click.Choice(sorted(CHANNEL_TYPES)), required=True)
@click.option("--code", required=True, help="The channel's code in URLs and orders.")
@click.option("--name")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="epay: gateway=URL, pid=ID, key=MERCHANT_KEY; alipay: app_id=, private_key=PEM, "
                   "alipay_public_key=, seller_id=; stripe: secret_key=sk_..., "
                   "webhook_secret=whsec_...; paypal: client_id=, client_secret=, webhook_id=, "
                   "merchant_id=, api_base=; sandbox: force=yes to take orders when "
                   "site.url is not a loopback address (its secret is made for it)")
@json_option
@with_app
def channel_add(channel_type, code, name, options, as_json):
    """Add a payment channel."""
    ch = add_channel(db.session, get_vault(), channel_type=channel_type, code=code, name=name,
                     options=parse_options(options), actor=cli_actor())
    emit(as_json, {"id": ch.id, "code": ch.code, "type": ch.type, "name": ch.name, "enabled": ch.is_enabled},
         f"added {ch.type} channel {ch.code}")


@channel.command("list")
@json_option
@with_app(readonly=True)
def channel_list(as_json):
    """List payment channels (secrets are never shown)."""
    rows = [{"id": c.id, "code": c.code, "type": c.type, "name": c.name, "enabled": c.is_enabled,
             **json.loads(c.options)}
            for c in db.session.scalars(sa.select(PaymentChannel).order_by(PaymentChannel.id))]
    emit(as_json, {"channels": rows},
         "\n".join(f"{r['code']}\t{r['type']}\t{'enabled' if r['enabled'] else 'disabled'}\t{r['name']}"
                   for r in rows) or "no channels")


def _by_code(code: str) -> PaymentChannel:
    channel = db.session.scalar(sa.select(PaymentChannel).where(PaymentChannel.code == code))
    if channel is None:
        raise NotFound(f"channel {code!r} not found")
    return channel


def _switch(code: str, enabled: bool, as_json: bool) -> None:
    channel = _by_code(code)
    changed = set_channel_enabled(db.session, channel, enabled, vault=get_vault(), actor=cli_actor())
    state = "enabled" if enabled else "disabled"
    emit(as_json, {"code": channel.code, "enabled": channel.is_enabled, "changed": changed},
         f"channel {channel.code} {state}" if changed else f"channel {channel.code} was already {state}")


@channel.command("enable")
@click.option("--code", required=True)
@json_option
@with_app
def channel_enable(code, as_json):
    """Let buyers pay with a channel again (refused while its key is too weak); audited."""
    _switch(code, True, as_json)


@channel.command("disable")
@click.option("--code", required=True)
@json_option
@with_app
def channel_disable(code, as_json):
    """Stop offering a channel to new orders; callbacks for its orders still arrive. Audited."""
    _switch(code, False, as_json)


@channel.command("remove")
@click.option("--code", required=True, help="The channel's code.")
@json_option
@with_app
def channel_remove(code, as_json):
    """Delete a channel no order ever used, with its stored key; audited. A used one is
    refused: disable it instead (its orders' callbacks and reconciliation need it)."""
    channel = _by_code(code)
    remove_channel(db.session, channel, actor=cli_actor())
    emit(as_json, {"code": code, "removed": True}, f"removed channel {code}")
