from __future__ import annotations

import json

import click
import sqlalchemy as sa

from ..context import get_vault
from ..audit.services import cli_actor
from ..errors import InvalidRequest, NotFound
from ..extensions import db
from ..payments.models import PaymentChannel
from ..payments.services import (CHANNEL_TYPES, add_channel, remove_channel, routing_of, set_channel_enabled,
                                 set_routing)
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
                   "alipay_public_key=, seller_id=; epay2: gateway=URL, pid=ID, merchant_private_key=PEM, "
                   "platform_public_key=, pay_types=alipay,wxpay; wechatpay: mchid=, appid=, merchant_serial_no=, "
                   "private_key=PEM, apiv3_key=, platform_public_key=PEM, platform_serial=; stripe: secret_key=sk_..., "
                   "webhook_secret=whsec_...; paypal: client_id=, client_secret=, webhook_id=, merchant_id=, "
                   "api_base=; epusdt: api_base=URL, token=API_TOKEN, trade_type= (BEpusdt), "
                   "currency= (default CNY); balance: none (buyers pay from their member's or agent's "
                   "balance); points: none (they pay with their points); sandbox: force=yes to take orders when "
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


@channel.command("route")
@click.argument("code")
@click.option("--priority", metavar="N", help="Lower first (the channel's sort order).")
@click.option("--weight", metavar="N", help="Its share among channels of one priority, 0-1000 (0: last).")
@click.option("--min-amount", metavar="AMOUNT", help="Orders below this go to another channel ('none': no limit).")
@click.option("--max-amount", metavar="AMOUNT", help="Orders above this go to another channel ('none': no limit).")
@click.option("--daily-cap", metavar="AMOUNT", help="What it may take a day, orders placed less those expired "
                                                    "('none': no cap).")
@click.option("--fee-percent", metavar="PERCENT", help="What the provider keeps, e.g. 0.6 (recorded per payment).")
@click.option("--fee-fixed", metavar="AMOUNT", help="A fixed part of the fee per payment, e.g. 0.10.")
@json_option
@with_app
def channel_route(code, priority, weight, min_amount, max_amount, daily_cap, fee_percent, fee_fixed, as_json):
    """Show or change a channel's routing rules (and its health)."""
    ch = db.session.scalar(sa.select(PaymentChannel).where(PaymentChannel.code == code))
    if ch is None:
        raise NotFound(f"channel {code!r} not found")
    given = dict(priority=priority, weight=weight, min_amount=min_amount, max_amount=max_amount,
                 daily_cap=daily_cap, fee_percent=fee_percent, fee_fixed=fee_fixed)
    if any(v is not None for v in given.values()):
        rules = set_routing(db.session, ch, actor=cli_actor(), **given)
    else:
        rules = routing_of(db.session, ch)
    text = (f"{ch.code}: priority {rules['priority']}, weight {rules['weight']}, "
            f"amounts {rules['min_amount'] or '-'}..{rules['max_amount'] or '-'}, "
            f"daily cap {rules['daily_cap'] or 'none'}, fee {rules['fee_percent']}% + {rules['fee_fixed']}, "
            f"health {rules['health']}"
            + (f" ({rules['health_error']})" if rules["health_error"] else ""))
    emit(as_json, {"code": ch.code, **rules}, text)
