"""The payment gateway protocols kamengd speaks besides Epay and the sandbox, by channel type.

Each is loaded when first used (a provider's SDK is not imported by every
`kamengd` command): SPECS says what a type's channel is made of without it.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from .base import Gateway


@dataclass(frozen=True)
class Spec:
    module: str
    cls: str
    options: tuple[str, ...]
    required: tuple[str, ...]
    secret: tuple[str, ...]
    json_callbacks: bool = False


SPECS = {
    "stripe": Spec("stripe_checkout", "StripeCheckout", ("secret_key", "webhook_secret", "api_base"),
                   ("secret_key", "webhook_secret"), ("secret_key", "webhook_secret"), json_callbacks=True),
    "alipay": Spec("alipay_f2f", "AlipayFaceToFace", ("app_id", "private_key", "alipay_public_key", "seller_id",
                                                      "gateway"),
                   ("app_id", "private_key", "alipay_public_key"), ("private_key",)),
    "epay2": Spec("epay2", "RainbowEpayV2", ("gateway", "pid", "merchant_private_key", "platform_public_key",
                                             "pay_types"),
                  ("gateway", "pid", "merchant_private_key", "platform_public_key"), ("merchant_private_key",)),
    "epusdt": Spec("epusdt", "Epusdt", ("api_base", "token", "trade_type", "currency"), ("api_base", "token"),
                   ("token",), json_callbacks=True),
    "wechatpay": Spec("wechatpay_native", "WeChatPayNative",
                      ("mchid", "appid", "merchant_serial_no", "private_key", "apiv3_key", "platform_public_key",
                       "platform_serial", "api_base"),
                      ("mchid", "appid", "merchant_serial_no", "private_key", "apiv3_key", "platform_public_key",
                       "platform_serial"), ("private_key", "apiv3_key"), json_callbacks=True),
    "paypal": Spec("paypal_orders", "PayPalOrders", ("client_id", "client_secret", "webhook_id", "api_base",
                                                     "merchant_id"),
                   ("client_id", "client_secret", "webhook_id"), ("client_secret",), json_callbacks=True),
}
_loaded: dict[str, Gateway] = {}


def gateway(channel_type: str) -> Gateway | None:
    """The protocol of a channel type, or None (Epay and the sandbox are not here)."""
    spec = SPECS.get(channel_type)
    if spec is None:
        return None
    found = _loaded.get(channel_type)
    if found is None:
        module = importlib.import_module(f"{__name__}.{spec.module}")
        found = _loaded[channel_type] = getattr(module, spec.cls)()
        assert (found.options, found.required, found.secret) == (spec.options, spec.required, spec.secret), \
            channel_type
    return found
