from __future__ import annotations

import json
import re
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..audit.services import record
from ..errors import Conflict, InvalidRequest
from ..vault import Vault
from .models import PaymentChannel

CODE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")

# Per channel type: the options it takes, which are required, which are secret.
CHANNEL_TYPES = {
    "epay": {"options": ("gateway", "pid", "key"), "required": ("gateway", "pid", "key"),
             "secret": ("key",)},
}


def _validate_options(channel_type: str, options: dict[str, str]) -> None:
    spec = CHANNEL_TYPES[channel_type]
    for name in options:
        if name not in spec["options"]:
            raise InvalidRequest(f"option {name}: not an option of {channel_type} "
                                 f"(takes {', '.join(spec['options'])})")
    for name in spec["required"]:
        if not options.get(name, "").strip():
            # An empty Epay key would make every callback forgeable.
            raise InvalidRequest(f"option {name}: required for a {channel_type} channel")
    if channel_type == "epay":
        gateway = urlsplit(options["gateway"])
        if gateway.scheme not in ("http", "https") or not gateway.netloc or gateway.query:
            raise InvalidRequest("option gateway: an http(s) base URL such as https://pay.example.com")


def channel_secrets(vault: Vault, channel: PaymentChannel) -> dict[str, str]:
    if channel.secret_ciphertext is None:
        return {}
    plaintext = vault.decrypt_secret(f"channel:{channel.code}", channel.secret_nonce,
                                     channel.secret_ciphertext, channel.secret_key_version)
    return json.loads(plaintext)


def add_channel(session: Session, vault: Vault, *, channel_type: str, code: str, actor: str,
                name: str | None = None, options: dict[str, str] | None = None,
                source_ip: str | None = None) -> PaymentChannel:
    options = {k: v.strip() for k, v in (options or {}).items()}
    if channel_type not in CHANNEL_TYPES:
        raise InvalidRequest(f"type: must be one of {', '.join(CHANNEL_TYPES)}")
    if not CODE_RE.match(code):
        raise InvalidRequest("code: 1-32 lower-case letters, digits, '_' or '-'")
    _validate_options(channel_type, options)
    if session.scalar(sa.select(PaymentChannel.id).where(PaymentChannel.code == code)) is not None:
        raise Conflict(f"channel {code!r} already exists")
    secret_names = CHANNEL_TYPES[channel_type]["secret"]
    public = {k: v for k, v in options.items() if k not in secret_names}
    secrets = {k: v for k, v in options.items() if k in secret_names}
    channel = PaymentChannel(code=code, type=channel_type, name=(name or code).strip()[:100],
                             options=json.dumps(public, sort_keys=True))
    if secrets:
        channel.secret_nonce, channel.secret_ciphertext, channel.secret_key_version = vault.encrypt_secret(
            f"channel:{code}", json.dumps(secrets, sort_keys=True).encode())
    session.add(channel)
    session.flush()
    record(session, "channel.add", actor=actor, target=f"channel:{code}", source_ip=source_ip,
           details={"type": channel_type, "name": channel.name, **public,
                    "secret_options": sorted(secrets)})
    return channel
