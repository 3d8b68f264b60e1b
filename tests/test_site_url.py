"""Install defaults that silently break payments (W10 §9, §11): a site.url no gateway can
reach, or one that names another port than the server listens on, is said out loud."""
import secrets
from urllib.parse import parse_qs, urlsplit

import pytest

from conftest import run_cli
from kamengd.cli.serve import site_url_mismatch
from kamengd.config import callback_url_problem


@pytest.mark.parametrize("url, problem", [
    ("http://127.0.0.1:8000", "cannot reach"), ("https://localhost", "cannot reach"),
    ("https://[::1]:8443", "cannot reach"), ("https://10.1.2.3", "cannot reach"),
    ("https://192.168.1.10", "cannot reach"), ("https://shop.lan", "cannot reach"),
    ("http://shop.example.com", "plain http"), ("https://shop.example.com", None), ("https://8.8.8.8", None),
])
def test_which_site_urls_a_gateway_can_call_back(url, problem):
    found = callback_url_problem(url)
    assert (found is None) if problem is None else (problem in found)


def test_doctor_warns_about_the_default_site_url(make_install):
    cfg = make_install("sqlite")
    line = next(line for line in run_cli("doctor", config=cfg.path).out.splitlines() if "site url" in line)
    assert line.startswith("WARN") and "cannot reach" in line
    public = run_cli("doctor", config=cfg.path, env={"KAMENGD_SITE_URL": "https://shop.example.com"}).out
    line = next(line for line in public.splitlines() if "site url" in line)
    assert line.startswith("ok") and "https://shop.example.com" in line


def test_serve_says_when_site_url_names_another_port(make_install, start_server):
    assert site_url_mismatch("http://127.0.0.1:8000", "127.0.0.1", 8000) is None
    assert site_url_mismatch("https://shop.example.com", "127.0.0.1", 9000) is None   # a proxy in front
    cfg = make_install("sqlite")
    base = start_server(cfg.path)
    log = start_server.log(start_server.by_base[base])
    port = base.rsplit(":", 1)[1]
    assert f"warning: site.url is http://127.0.0.1:8000, but this server listens on 127.0.0.1:{port}" in log
    assert f"`kamengd setting set site.url http://127.0.0.1:{port}`" in log
    # The address staff set at run time (the panel, `setting set`) is the one pay URLs use: it is checked.
    run_cli("setting", "set", "site.url", "http://localhost:8765", config=cfg.path, check=True)
    base = start_server(cfg.path)
    log = start_server.log(start_server.by_base[base])
    assert "warning: site.url is http://localhost:8765, but this server listens on" in log


def test_serve_on_a_busy_port_says_so_first(make_install):
    import socket

    cfg = make_install("sqlite")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run_cli("serve", "--bind", f"127.0.0.1:{port}", config=cfg.path)   # refused before the lease
    assert proc.returncode != 0
    assert proc.err.strip().splitlines() == [f"kamengd: cannot listen on 127.0.0.1:{port}: Address already in use "
                                             "(another server there? choose another with --bind HOST:PORT)"]


@pytest.fixture
def panel_site_url(shared_setting):
    """Sets the panel's site.url for one test; the shop's other tests share the database."""
    return lambda url: shared_setting("site.url", url)


def test_the_panels_site_url_is_the_address_pay_urls_name(backend, app, client, panel_site_url):
    from kamengd.catalog.services import create_product
    from kamengd.context import get_vault
    from kamengd.errors import InvalidRequest
    from kamengd.extensions import db
    from kamengd.payments.services import add_channel
    from kamengd.settings.services import set_setting
    from panel_support import login, make_staff

    with app.app_context():
        product = create_product(db.session, name="site url", price_cents=100, actor="t", delivery_mode="manual")
        code = f"su{secrets.token_hex(3)}"
        add_channel(db.session, get_vault(), channel_type="epay", code=code, actor="t",
                    options={"gateway": "https://pay.example.com", "pid": "1", "key": "site-url-merchant-key-01"})
        db.session.commit()
        pid = product.id
        for bad in ("shop.example.com", "https://shop.example.com/?x=1", "ftp://shop.example.com", "https://a b"):
            with pytest.raises(InvalidRequest, match="site.url"):
                set_setting(db.session, "site.url", bad, actor="t")
            db.session.rollback()

    def notify_url():
        answer = client.post("/api/v1/orders", json={"product_id": pid, "quantity": 1, "email": "s@example.com",
                                                    "channel": code})
        assert answer.status_code == 201, answer.get_json()
        return parse_qs(urlsplit(answer.get_json()["pay_url"]).query)["notify_url"][0]

    before = notify_url()
    assert before.endswith(f"/pay/{code}/notify") and not before.startswith("https://shop.example.com")
    staff = app.test_client()
    staff.set_cookie("lang", "en")
    assert login(staff, make_staff(app, "admin")).status_code == 302
    settings = staff.get("/admin/settings").get_data(as_text=True)
    assert 'name="site.url"' in settings and 'id="site-url-problem"' in settings   # the default: a warning
    panel_site_url("https://shop.example.com/")
    # the cached offer is not trusted: the INSERT sees the setting changed and reads again
    assert notify_url() == f"https://shop.example.com/pay/{code}/notify"
    settings = staff.get("/admin/settings").get_data(as_text=True)
    assert 'id="site-url-problem"' not in settings and 'value="https://shop.example.com"' in settings


def test_doctor_names_the_panels_site_url(make_install):
    from kamengd.app import create_app
    from kamengd.extensions import db
    from kamengd.settings.services import set_setting

    cfg = make_install("sqlite")
    app = create_app(cfg)
    with app.app_context():
        set_setting(db.session, "site.url", "https://shop.example.com", actor="test")
        db.session.commit()
    line = next(line for line in run_cli("doctor", config=cfg.path).out.splitlines() if "site url" in line)
    assert line.startswith("ok") and "https://shop.example.com (set in the panel)" in line


def test_install_asks_for_the_shop_name(tmp_path):
    import tomllib

    from conftest import write_password

    asked = run_cli("install", "--data-dir", tmp_path / "asked", "--admin-password-file", write_password(tmp_path),
                    input="小雨的卡铺\ny\n".encode(), check=True)
    assert "Shop name, shown to buyers" in asked.err
    config = tomllib.loads((tmp_path / "asked" / "kamengd.toml").read_text(encoding="utf-8"))
    assert config["site"]["name"] == "小雨的卡铺"
    scripted = run_cli("install", "--data-dir", tmp_path / "scripted", "--yes", check=True)
    assert "Shop name" not in scripted.err
    assert tomllib.loads((tmp_path / "scripted" / "kamengd.toml").read_text(encoding="utf-8"))["site"]["name"] == \
        "kamengd"
