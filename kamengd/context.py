"""The running app's config and data key, for code that runs in an app context.

A leaf: it knows Flask, the config and the vault, nothing of the features,
so every service and view can import it at the top. The factory
(kamengd.app) puts the config in; the data key is read on first use.
"""
from __future__ import annotations

import threading

from flask import current_app

from .config import Config
from .vault import Vault, key_file_signature, load_vault

CONFIG_KEY = "kamengd.config"
_VAULT_KEY = "kamengd.vault"
_vault_lock = threading.Lock()


def get_config() -> Config:
    return current_app.extensions[CONFIG_KEY]


def get_vault() -> Vault:
    """The data key, read on first use and again whenever the key file changes
    (a rotation adds a key version while the shop keeps running)."""
    path = get_config().security.data_key_file
    signature = key_file_signature(path)
    cached = current_app.extensions.get(_VAULT_KEY)
    if cached is None or cached[1] != signature:
        with _vault_lock:
            cached = current_app.extensions.get(_VAULT_KEY)
            if cached is None or cached[1] != signature:
                cached = (load_vault(path), signature)
                current_app.extensions[_VAULT_KEY] = cached
    return cached[0]
