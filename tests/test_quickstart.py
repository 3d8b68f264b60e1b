"""The README's first command sells end to end: `scripts/quickstart` installs a demo shop whose
sandbox channel lets a buyer browse, buy, press pay and get the keys (W4 §5).

The script runs from a copy of the checkout (its ./var is its own) with a virtualenv that is
this one's Python and kamengd, stamped with the copy's source hash so the script installs
nothing; the shop is a real server on a free port, driven like a browser (cookies, forms)."""
from __future__ import annotations

import http.cookiejar
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port

REPO = Path(__file__).resolve().parent.parent
TREE = ("scripts", "kamengd", "migrations", "config", "setup.cfg", "pyproject.toml", "README.md", "LICENSE")


def _copy_checkout(to: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in TREE:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, to / name, ignore=ignore)
        elif source.exists():
            shutil.copy2(source, to / name)


def _venv_for(root: Path, venv: Path) -> None:
    """A venv that kamengd_venv accepts as installed from `root`: this Python and kamengd."""
    kamengd = Path(sys.executable).parent / "kamengd"
    if not kamengd.exists():
        pytest.fail(f"no kamengd command next to {sys.executable}: install the package first")
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    (venv / "bin" / "kamengd").symlink_to(kamengd)
    digest = subprocess.run(["bash", "-c", 'source scripts/lib/venv.sh; ROOT="$PWD"; _kamengd_source_hash'],
                            cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    (venv / ".kamengd-install-stamp").write_text(f"{digest} \n")


class Browser:
    """urllib with cookies and the forms' CSRF tokens, following redirects like a browser."""

    def __init__(self, base: str):
        self.base = base
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def get(self, path: str) -> tuple[str, str]:
        with self.opener.open(urllib.parse.urljoin(self.base, path), timeout=30) as resp:
            return resp.geturl(), resp.read().decode()

    def post(self, path: str, fields: dict) -> tuple[str, str]:
        data = urllib.parse.urlencode(fields).encode()
        with self.opener.open(urllib.parse.urljoin(self.base, path), data=data, timeout=30) as resp:
            return resp.geturl(), resp.read().decode()


def _csrf(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def _wait(base: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 180   # the first run installs and migrates
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"quickstart exited {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    pytest.fail(f"quickstart did not serve in time:\n{log.read_text()}")


def test_quickstart_browse_buy_pay_keys(tmp_path):
    root = tmp_path / "checkout"
    _copy_checkout(root)
    _venv_for(root, tmp_path / "venv")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAMENGD_")}
    env.update(KAMENGD_VENV=str(tmp_path / "venv"), KAMENGD_BIND=f"127.0.0.1:{port}",
               KAMENGD_SHOP_NAME="Quick shop")
    log = tmp_path / "quickstart.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(root / "scripts" / "quickstart")], cwd=tmp_path, env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        _wait(base, proc, log)
        said = log.read_text()
        assert "installing kamengd" not in said, said   # the stamped venv was taken as it is
        assert "created the sandbox payment channel" in said, said

        browser = Browser(base)
        _, home = browser.get("/?lang=en")   # the language is kept in a cookie from here on
        assert "Quick shop" in home
        product = re.search(r'href="(/product/\d+)"', home).group(1)
        _, page = browser.get(product)
        assert 'value="sandbox"' in page
        landed, pay_page = browser.post(product, {"csrf_token": _csrf(page), "quantity": "1",
                                                  "email": "newcomer@example.com", "channel": "sandbox"})
        assert urllib.parse.urlsplit(landed).path == "/pay/sandbox/sandbox", landed
        assert "9.90 CNY" in pay_page and "no money moves" in pay_page
        order_no = re.search(r'name="order_no" value="(\d+)"', pay_page).group(1)
        fields = {"csrf_token": _csrf(pay_page), "order_no": order_no}
        token = re.search(r'name="token" value="([^"]+)"', pay_page)
        if token:
            fields["token"] = token.group(1)
        landed, order_page = browser.post("/pay/sandbox/sandbox", fields)
        assert urllib.parse.urlsplit(landed).path == f"/order/{order_no}", landed
        keys = re.findall(r"DEMO-[A-Z0-9]{4}-[A-Z0-9]{4}-[A-Z0-9]{4}", order_page)
        assert len(set(keys)) == 1, order_page
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert "Traceback" not in log.read_text(), log.read_text()
