"""Install defaults that silently break payments (W10 §9, §11): a site.url no gateway can
reach, or one that names another port than the server listens on, is said out loud."""
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
    assert f"KAMENGD_SITE_URL=http://127.0.0.1:{port}" in log


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
