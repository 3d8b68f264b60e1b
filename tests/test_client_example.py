"""The client examples of kamengd/docs/agent-api.md ("A client in one command") work.

Both snippets are taken from the page as they are written, given a real
server's address, a real key pair and product, and run: the bash one with
curl and openssl, the Python one with the standard library alone (`python -S`:
no site-packages). Each reads the balance and buys; the keys come back.
"""
from __future__ import annotations

import ast
import io
import json
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PASSWORD, Servers

PAGE = Path(__file__).resolve().parent.parent / "kamengd" / "docs" / "agent-api.md"


def snippet(language: str) -> str:
    """The one ```language block of the page's "A client in one command" section."""
    text = PAGE.read_text(encoding="utf-8")
    section = re.search(r"^## A client in one command\n(.*?)(?=^## )", text, flags=re.M | re.S).group(1)
    blocks = re.findall(rf"^```{language}\n(.*?)^```", section, flags=re.M | re.S)
    assert len(blocks) == 1, f"one {language} block expected, found {len(blocks)}"
    return blocks[0]


def aimed(code: str, shop: dict) -> str:
    """The snippet with the page's example address, key, secret and product replaced by the real ones."""
    replaced = code
    for example, real in (("https://shop.example.com", shop["base"]), ("ak_0123456789abcdef01234567", shop["key_id"]),
                          ("the-secret-shown-once", shop["secret"]), ('"product_id": 1,', f'"product_id": {shop["product"]},')):
        assert example in replaced, f"the page's example no longer says {example!r}"
        replaced = replaced.replace(example, real)
    return replaced


@pytest.fixture(scope="module")
def shop(backend, databases, tmp_path_factory):
    """A real server; an agent holding 100.00 with a key; a product at 9.90 with 10 keys."""
    from kamengd.agents import services as agents
    from kamengd.app import create_app
    from kamengd.catalog.services import create_product
    from kamengd.config import load_config
    from kamengd.context import get_vault
    from kamengd.extensions import db
    from kamengd.inventory.services import import_keys
    from kamengd.operations.installation import install

    data_dir = tmp_path_factory.mktemp(f"client-{backend}") / "data"
    url = None if backend == "sqlite" else databases.new_url(backend)
    config_path = install(data_dir, admin_password=PASSWORD, database_url=url).config_path
    app = create_app(load_config(config_path, env={}))
    with app.app_context():
        product = create_product(db.session, name="月卡", price_cents=990, actor="t")
        import_keys(db.session, get_vault(), product_id=product.id, actor="t",
                    fh=io.BytesIO("\n".join(f"CL-{secrets.token_hex(6)}" for _ in range(10)).encode()))
        level, _ = agents.set_level(db.session, name="base", discount="0", actor="t")
        agent = agents.create_agent(db.session, username="scripter", level=level.name, actor="t")
        key_id, secret = agents.issue_api_key(db.session, get_vault(), agent, actor="t")
        agents.credit_balance(db.session, agent, 10000, reason="t", actor="t")
        db.session.commit()
        made = {"product": product.id, "key_id": key_id, "secret": secret}
        db.session.remove()
        db.engine.dispose()
    servers = Servers()
    try:
        made["base"] = servers(config_path)
        yield made
    finally:
        servers.stop_all()


def test_the_shell_client(shop):
    missing = [tool for tool in ("bash", "curl", "openssl") if shutil.which(tool) is None]
    assert not missing, f"not installed: {missing} (scripts/test installs them with apt-get as root)"
    ran = subprocess.run(["bash", "-c", aimed(snippet("bash"), shop)], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    balance, order = [json.loads(line) for line in ran.stdout.splitlines() if line.strip()]
    assert balance["currency"] == "CNY" and re.fullmatch(r"[0-9]+\.[0-9]{2}", balance["balance"]), balance
    assert (order["status"], order["amount"], len(order["keys"])) == ("delivered", "19.80", 2), order


def run_python(code: str) -> list:
    ran = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    return [ast.literal_eval(line) for line in ran.stdout.splitlines()]


def cents(money: str) -> int:
    return int(money.replace(".", ""))


def test_the_python_client(shop):
    code = snippet("python")
    assert len(code.splitlines()) <= 20, "the page promises a signer of at most 20 lines"
    (status, balance), (placed, order) = run_python(aimed(code, shop))
    assert status == 200 and balance["currency"] == "CNY", balance
    assert (placed, order["status"], order["amount"], len(order["keys"])) == (201, "delivered", "19.80", 2), order
    # Again: the same Idempotency-Key gives the same order, charged once.
    (_status, after), (replayed, same) = run_python(aimed(code, shop))
    assert (replayed, same) == (201, order)
    assert cents(after["balance"]) == cents(balance["balance"]) - 1980
