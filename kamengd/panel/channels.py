"""Payment channels: list, add, edit, enable or disable, remove an unused one, test the signing set-up.

The merchant key is write-only here: a page shows whether one is stored,
never the key itself, and an empty key field keeps the stored one.
"""
from __future__ import annotations

import json

import sqlalchemy as sa
from flask import flash, redirect, render_template, request, url_for
from flask_babel import gettext as _

from ..context import get_config, get_vault
from ..audit.services import record
from ..errors import KamengdError
from ..extensions import db
from ..payments import methods
from ..payments import services as payments
from ..payments import routing, sandbox
from ..payments.gateways import SPECS
from ..payments.models import PaymentChannel
from ..settings.services import shop_url
from ..transaction import read_only
from .blueprint import bp
from .helpers import error_text, flash_errors
from .session import actor, client_ip
from .settings import site_url_problem

FIELDS = ("code", "name", "gateway", "pid", "key", "other_pay_types", "sort_order")
# Per type, the form's fields that are the channel's options. The single pay_type of older
# Epay channels is folded into pay_types when one is saved; the sandbox makes its own secret.
OPTION_FIELDS = {"epay": ("gateway", "pid", "key", "pay_types", "pay_type"), "sandbox": ("force",),
                 "balance": (), "points": (), **{name: spec.options for name, spec in SPECS.items()}}
# The order the "add a channel" choices are offered in: the common gateways first.
CHANNEL_TYPES = ("epay", "epay2", "alipay", "wechatpay", "epusdt", "stripe", "paypal", "balance", "points",
                 "sandbox")
MAX_FIELD = 1000   # longer than any valid value: the service says what the limit is


@bp.app_template_global()
def option_limit(name: str) -> int:
    return payments.option_limit(name)


@bp.app_template_global()
def type_label(channel_type: str) -> str:
    """What a channel type is called on the panel."""
    return {"epay": _("Epay (易支付)"), "epay2": _("Rainbow Epay V2 (彩虹易支付)"), "alipay": _("Alipay 当面付"),
            "wechatpay": _("WeChat Pay (Native)"), "epusdt": _("Epusdt / BEpusdt (USDT)"), "stripe": _("Stripe"),
            "paypal": _("PayPal"), "balance": _("Balance (members and agents)"),
            "points": _("Points (members and agents)"),
            "sandbox": _("Sandbox (for trying the shop)")}.get(channel_type, channel_type)


@bp.app_template_global()
def type_description(channel_type: str) -> str:
    """A line on what a channel of this type is, on the form that adds one."""
    return {
        "epay": _("the Epay (易支付) merchant protocol, MD5 signature: the buyer is sent to the gateway's page."),
        "epay2": _("彩虹易支付 (Rainbow Epay) V2 merchant API, signed RSA both ways: the buyer scans the platform's "
                   "QR code on this shop's page, or is sent to the platform's page."),
        "alipay": _("Alipay 当面付 (face-to-face payment): the buyer scans a QR code with Alipay. Signed RSA2 both "
                    "ways."),
        "wechatpay": _("WeChat Pay API v3, Native payment: the buyer scans a QR code with WeChat. Requests signed "
                       "with the merchant's key, notifications verified with WeChat Pay's public key and decrypted "
                       "with the APIv3 key."),
        "epusdt": _("Epusdt or BEpusdt, your own USDT (TRC20) gateway: the buyer sends the exact crypto amount to "
                    "the wallet address shown as a QR code. MD5 signature with the API token; no refunds through "
                    "it."),
        "stripe": _("Stripe Checkout (cards and the methods your Stripe account offers). In Stripe's dashboard, "
                    "add a webhook endpoint at this shop's /pay/CODE/notify for checkout.session.completed and "
                    "checkout.session.async_payment_succeeded."),
        "paypal": _("PayPal Orders v2: the buyer approves the payment at PayPal and the shop captures it. In "
                    "PayPal's developer dashboard, add a webhook at this shop's /pay/CODE/notify for "
                    "CHECKOUT.ORDER.APPROVED and PAYMENT.CAPTURE.COMPLETED."),
        "balance": _("buyers pay from their own balance on this shop, signed in as a member or an agent."),
        "points": _("buyers pay with the points they earned on this shop (积分兑换), signed in as a member or an "
                    "agent. A product sold through this channel only is a points-only product."),
        "sandbox": _("a pretend gateway for trying the shop: its pay page has a Pay button that completes the "
                     "order without any money moving."),
    }.get(channel_type, "")


@bp.app_template_global()
def option_label(name: str, channel_type: str = "") -> str:
    """A gateway option's label on the channel form."""
    if channel_type == "epay2" and name == "gateway":
        return _("Platform URL (its API address, e.g. https://pay.example.com/)")
    if (channel_type, name) == ("epusdt", "api_base"):
        return _("Address of your Epusdt or BEpusdt (https://…)")
    if channel_type == "wechatpay" and name == "private_key":
        return _("The merchant API private key (apiclient_key.pem)")
    if channel_type == "wechatpay" and name == "platform_public_key":
        return _("WeChat Pay public key or platform certificate (PEM)")
    return {"secret_key": _("Secret key (sk_live_… or sk_test_…)"),
            "webhook_secret": _("Webhook signing secret (whsec_…)"),
            "api_base": _("API base URL (leave empty for the provider's own)"),
            "app_id": _("APPID of the app on Alipay's open platform"),
            "private_key": _("The app's RSA private key (RSA2)"),
            "alipay_public_key": _("Alipay's public key (from the open platform's console)"),
            "seller_id": _("Seller ID (2088…; optional: notifications for another seller are refused)"),
            "gateway": _("Gateway URL (leave empty for the provider's own)"),
            "pid": _("Merchant ID (pid)"),
            "merchant_private_key": _("The merchant's RSA private key (商户私钥)"),
            "platform_public_key": _("The platform's RSA public key (平台公钥)"),
            "token": _("API token (api_auth_token in Epusdt's or BEpusdt's configuration)"),
            "trade_type": _("Trade type (BEpusdt only, such as usdt.trc20; empty for Epusdt)"),
            "currency": _("Fiat currency the gateway prices in (empty: CNY)"),
            "mchid": _("Merchant ID (商户号)"),
            "appid": _("APPID bound to the merchant ID (wx…)"),
            "merchant_serial_no": _("Serial number of the merchant API certificate"),
            "apiv3_key": _("APIv3 key (32 characters)"),
            "platform_serial": _("Its ID (PUB_KEY_ID_…) or the certificate's serial number"),
            "client_id": _("Client ID of the REST app (PayPal developer dashboard)"),
            "client_secret": _("Secret of the REST app"),
            "webhook_id": _("Webhook ID (of the webhook to /pay/<code>/notify)"),
            "merchant_id": _("Merchant ID (optional: payments to another account are refused)")}.get(name, name)


def _form() -> dict[str, str]:
    form = {name: request.form.get(name, "")[:MAX_FIELD] for name in FIELDS}
    # Ticked well-known types first, in the panel's order, then any the merchant typed.
    ticked = [t for t in methods.KNOWN if t in request.form.getlist("pay_types")]
    form["pay_types"] = ",".join(ticked + ([form["other_pay_types"]] if form["other_pay_types"].strip() else []))
    form["pay_type"] = ""
    form["force"] = "yes" if request.form.get("force") == "yes" else ""
    for spec in SPECS.values():   # a gateway type's options, each a field of its own name
        for name in spec.options:
            form.setdefault(name, request.form.get(name, "")[:2 * payments.option_limit(name)])
    return form


def _new_type() -> str:
    wanted = request.values.get("type", "epay")
    return wanted if wanted in OPTION_FIELDS else "epay"


def _values(channel: PaymentChannel) -> dict[str, str]:
    options = json.loads(channel.options)
    if channel.type == "sandbox" or channel.type in SPECS:   # (a gateway's secrets are never sent back)
        shown = {"code": channel.code, "name": channel.name, "sort_order": str(channel.sort_order), **options}
        if "pay_types" in options:
            shown["other_pay_types"] = ",".join(t for t in methods.pay_types(channel.type, options)
                                                if t not in methods.KNOWN)
        return shown
    # Nothing set: nothing ticked (the form says alipay is then used), so saving changes nothing.
    types = methods.pay_types(channel.type, options) if options.get("pay_types") or options.get("pay_type") else []
    return {"code": channel.code, "name": channel.name, "sort_order": str(channel.sort_order),
            "gateway": options.get("gateway", ""), "pid": options.get("pid", ""), "pay_types": ",".join(types),
            "other_pay_types": ",".join(t for t in types if t not in methods.KNOWN)}


def _render_form(channel: PaymentChannel | None, values: dict[str, str], status: int = 200,
                 channel_type: str = "epay"):
    channel_type = channel.type if channel else channel_type
    spec = SPECS.get(channel_type)
    hidden = {"key", *(spec.secret if spec else ())}
    values = {k: v for k, v in values.items() if k not in hidden}   # a secret typed in is never sent back
    ticked = values.get("pay_types", "").split(",")
    return render_template("panel/channels_form.html", channel=channel, values=values,
                           channel_type=channel_type, gateway_types=list(SPECS),
                           gateway_fields=[(name, name in spec.secret, name in spec.required)
                                           for name in spec.options] if spec else [],
                           site_is_loopback=sandbox.is_loopback_url(shop_url()),
                           known_types=[(t, labels[1], t in ticked) for t, labels in methods.KNOWN.items()],
                           key_set=channel is not None and channel.secret_ciphertext is not None,
                           # a used channel is kept (only disabled): the page says so instead of offering removal
                           used_by=payments.channel_use_count(db.session, channel) if channel else 0), status


@bp.get("/channels")
def channels():
    read_only()
    rows = db.session.scalars(sa.select(PaymentChannel).order_by(PaymentChannel.sort_order,
                                                                 PaymentChannel.id)).all()
    weak = {channel.id: error_text(problem) for channel, problem in payments.weak_channels(db.session, get_vault())}
    return render_template("panel/channels_list.html", weak=weak, pay_types=methods.pay_types,
                           channel_types=CHANNEL_TYPES,
                           channels=[(c, json.loads(c.options)) for c in rows])


@bp.route("/channels/new", methods=["GET", "POST"])
def channel_new():
    channel_type = _new_type()
    if request.method == "GET":
        return _render_form(None, {"sort_order": "0"}, channel_type=channel_type)
    form = _form()
    try:
        channel = payments.add_channel(
            db.session, get_vault(), channel_type=channel_type, code=form["code"].strip(), name=form["name"],
            options={name: form[name] for name in OPTION_FIELDS[channel_type] if form[name].strip()},
            sort_order=form["sort_order"], actor=actor(), source_ip=client_ip())
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
        return _render_form(None, form, exc.http_status, channel_type=channel_type)
    flash(_("Payment channel %(code)s added.", code=channel.code), "success")
    return redirect(url_for("panel.channels"), code=303)


@bp.route("/channels/<int:channel_id>", methods=["GET", "POST"])
def channel_edit(channel_id: int):
    if request.method == "GET":
        read_only()
        channel = payments.get_channel(db.session, channel_id)
        return _render_form(channel, _values(channel))
    channel = payments.get_channel(db.session, channel_id)
    form = _form()
    try:
        changes = payments.update_channel(
            db.session, get_vault(), channel, name=form["name"],
            options={name: form[name] for name in OPTION_FIELDS.get(channel.type, ())}, sort_order=form["sort_order"],
            actor=actor(), source_ip=client_ip())
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
        channel = payments.get_channel(db.session, channel_id)
        return _render_form(channel, {**form, "code": channel.code}, exc.http_status)
    flash(_("Payment channel %(code)s saved.", code=channel.code) if changes else _("Nothing changed."),
          "success" if changes else "info")
    return redirect(url_for("panel.channels"), code=303)


@bp.post("/channels/<int:channel_id>/toggle")
def channel_toggle(channel_id: int):
    channel = payments.get_channel(db.session, channel_id)
    if request.form.get("enabled") not in ("0", "1"):
        flash(_("Choose whether to enable or disable the channel."), "error")
        return redirect(url_for("panel.channels"), code=303)
    enable = request.form["enabled"] == "1"
    try:
        changed = payments.set_channel_enabled(db.session, channel, enable, vault=get_vault(), actor=actor(),
                                               source_ip=client_ip())
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
        return redirect(url_for("panel.channels"), code=303)
    if not changed:
        flash(_("Payment channel %(code)s was already in that state.", code=channel.code), "info")
    elif enable:
        flash(_("Payment channel %(code)s is enabled: buyers can pay with it.", code=channel.code), "success")
    else:
        flash(_("Payment channel %(code)s is disabled: new orders cannot use it.", code=channel.code), "success")
    return redirect(url_for("panel.channels"), code=303)


@bp.post("/channels/<int:channel_id>/remove")
def channel_remove(channel_id: int):
    channel = payments.get_channel(db.session, channel_id)
    code = channel.code
    try:
        payments.remove_channel(db.session, channel, actor=actor(), source_ip=client_ip())
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
        return redirect(url_for("panel.channel_edit", channel_id=channel_id), code=303)
    flash(_("Payment channel %(code)s removed, with its stored merchant key.", code=code), "success")
    return redirect(url_for("panel.channels"), code=303)


@bp.post("/channels/<int:channel_id>/test")
def channel_test(channel_id: int):
    channel = payments.get_channel(db.session, channel_id)
    code = channel.code
    result = payments.test_channel(db.session, get_vault(), channel, shop_url())   # (ends the read)
    shown = result.localized(_)
    # The test is a health check too: a channel that fails it is routed around until one succeeds.
    checked = payments.get_channel(db.session, channel_id)
    routing.mark_health(db.session, checked, payments.working(checked.type, result), result.message, actor=actor())
    record(db.session, "channel.test", actor=actor(), target=f"channel:{code}", source_ip=client_ip(),
           details={"ok": result.ok, "stage": result.stage, "message": result.message})
    unreachable = site_url_problem()   # in the staff member's language (the settings page's words)
    if unreachable:
        flash(_("Callbacks cannot reach this shop: %(problem)s", problem=unreachable), "warning")
    if result.ok:
        flash(_("Channel %(code)s works: the key signs and verifies, and %(message)s.", code=code,
                message=shown), "success")
    elif result.stage == "signature":
        flash(_("Channel %(code)s: the signature check failed: %(message)s", code=code, message=shown),
              "error")
    else:
        flash(_("Channel %(code)s: the key signs and verifies, but %(message)s", code=code,
                message=shown), "error")
    return redirect(url_for("panel.channels"), code=303)


ROUTING_FIELDS = ("priority", "weight", "min_amount", "max_amount", "daily_cap", "fee_percent", "fee_fixed")


@bp.route("/channels/<int:channel_id>/routing", methods=["GET", "POST"])
def channel_routing(channel_id: int):
    """A channel's routing rules (priority, weight, amounts, daily cap, fees) and its health."""
    channel = payments.get_channel(db.session, channel_id)
    if request.method == "GET":
        read_only()
        return _routing_page(channel, payments.routing_of(db.session, channel))
    form = {name: request.form.get(name, "")[:40] for name in ROUTING_FIELDS}
    try:
        payments.set_routing(db.session, channel, actor=actor(), source_ip=client_ip(), **form)
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
        return _routing_page(payments.get_channel(db.session, channel_id), form, exc.http_status)
    flash(_("Routing of %(code)s saved.", code=channel.code), "success")
    return redirect(url_for("panel.channels"), code=303)


def _routing_page(channel: PaymentChannel, values: dict, status: int = 200):
    from ..catalog.models import Product   # (the page's one use of the catalogue: not worth a module import)
    from ..payments.models import ProductChannel   # (with the product it names)
    taken = payments.taken_today(db.session, channel, get_config().site.timezone)
    products = db.session.scalars(sa.select(Product).join(ProductChannel, ProductChannel.product_id == Product.id)
                                  .where(ProductChannel.channel_id == channel.id).order_by(Product.id)).all()
    return render_template("panel/channels_routing.html", channel=channel, values=values, taken=taken,
                           rules=payments.routing_of(db.session, channel), products=products), status


@bp.app_template_global()
def product_channel_choices(product_id: int) -> list[tuple[str, str, bool]]:
    """(code, name, ticked) of every channel, for the product page's "paid through" form."""
    chosen = set(payments.product_channels(db.session, product_id))
    rows = db.session.execute(sa.select(PaymentChannel.code, PaymentChannel.name)
                              .order_by(PaymentChannel.sort_order, PaymentChannel.id)).all()
    return [(code, name, code in chosen) for code, name in rows]


@bp.post("/products/<int:product_id>/channels")
def product_channels(product_id: int):
    """The channels a product is paid through (none ticked: any channel)."""
    codes = [c[:32] for c in request.form.getlist("channels")[:100]]
    try:
        found = payments.set_product_channels(db.session, product_id, ",".join(codes), actor=actor(),
                                              source_ip=client_ip())
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
    else:
        flash(_("The product is paid through %(channels)s.", channels=", ".join(found)) if found
              else _("The product is paid through any channel."), "success")
    return redirect(url_for("panel.product_edit", product_id=product_id), code=303)
