"""`kamengd key rotate`: a new data key while a real server keeps selling; resumable; old versions retired."""
import json
import threading
import urllib.error
import urllib.request

import sqlalchemy as sa

from conftest import assert_one_line_error, run_cli
from kamengd.database import make_engine
from kamengd.vault import parse_key_file, render_key_file
from test_backup import populate
from test_orders import callback


def key_versions(cfg):
    engine = make_engine(cfg.database_url, pooled=False)
    with engine.connect() as conn:
        found = dict(conn.execute(sa.text("SELECT key_version, COUNT(*) FROM card_keys GROUP BY key_version")).all())
    engine.dispose()
    return found


def http(method, url, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status, resp.read().decode()


class Order:   # what tests/test_orders.callback needs
    def __init__(self, order_no, amount):
        self.order_no, self.amount_cents = order_no, amount


def test_rotation_while_selling(backend, make_install, start_server, tmp_path):
    cfg = make_install(backend)
    keys, _ = populate(cfg, n_keys=1500)
    base = start_server(cfg.path, "--no-scheduler")
    stop, sold, errors = threading.Event(), [], []

    def buyer():
        while not stop.is_set():
            try:
                status, body = http("POST", f"{base}/api/v1/orders", {"product_id": 1, "quantity": 1,
                                                                      "email": "r@example.com", "channel": "epay"})
                order = json.loads(body)
                params = callback(Order(order["order_no"], 990))
                query = "&".join(f"{k}={urllib.request.quote(str(v))}" for k, v in params.items())
                assert http("GET", f"{base}/pay/epay/notify?{query}")[1] == "success"
                _, body = http("GET", f"{base}/api/v1/orders/{order['order_no']}?token={order['token']}")
                sold.extend(json.loads(body)["keys"])
            except urllib.error.HTTPError as exc:
                errors.append(f"{exc.url}: {exc.code} {exc.read()[:200]!r}")
            except Exception as exc:   # noqa: BLE001 - every failure is reported below
                errors.append(repr(exc))
    threads = [threading.Thread(target=buyer) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        out = json.loads(run_cli("key", "rotate", "--batch-size", "50", "--json", config=cfg.path, check=True).out)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[:3]
    assert sold and len(set(sold)) == len(sold) and set(sold) <= set(keys)
    assert out["version"] == 2 and out["audit_resealed"] and out["channels"] == 1
    assert set(key_versions(cfg)) == {2}
    assert sorted(parse_key_file(cfg.security.data_key_file.read_text())) == [1, 2]   # retired an hour later
    out = json.loads(run_cli("key", "retire", "--json", config=cfg.path, check=True).out)
    assert out["retired"] == [1]
    assert sorted(parse_key_file(cfg.security.data_key_file.read_text())) == [2]
    retired = [p for p in cfg.security.data_key_file.parent.iterdir() if ".retired-" in p.name]
    assert len(retired) == 1 and sorted(parse_key_file(retired[0].read_text())) == [1]
    assert oct(retired[0].stat().st_mode)[-3:] == "600"
    # Every key, sold during the rotation or not, still reads back; the same server sells on.
    export = tmp_path / "all.txt"
    run_cli("keys", "export", "--product", "1", "--status", "all", "--output", export, config=cfg.path, check=True)
    assert sorted(export.read_text(encoding="utf-8").split()) == sorted(keys)
    status, body = http("POST", f"{base}/api/v1/orders", {"product_id": 1, "quantity": 1, "email": "a@example.com",
                                                          "channel": "epay"})
    assert status == 201
    run_cli("audit", "verify", config=cfg.path, check=True)
    # A key already in stock stays a duplicate under the new fingerprint key.
    again = tmp_path / "again.txt"
    again.write_text("\n".join(keys[:10]), encoding="utf-8")
    imported = json.loads(run_cli("keys", "import", "--product", "1", again, "--json", config=cfg.path,
                                  check=True).out)
    assert imported == {"imported": 0, "duplicates": 10, "blank": 0}


def test_an_interrupted_rotation_resumes(backend, make_install, tmp_path):
    from kamengd.app import create_app
    from kamengd.extensions import db
    from kamengd.operations.rotation import reencrypt_card_keys
    from kamengd.vault import load_vault

    cfg = make_install(backend)
    keys, _ = populate(cfg, n_keys=200)
    # --prepare adds version 2 only; imports from then on check both fingerprints.
    out = json.loads(run_cli("key", "rotate", "--prepare", "--json", config=cfg.path, check=True).out)
    assert out["version"] == 2 and out["card_keys"] == 0 and key_versions(cfg) == {1: len(keys)}
    dup = tmp_path / "dup.txt"
    dup.write_text("\n".join(keys[:5] + ["BRAND-NEW"]), encoding="utf-8")
    assert json.loads(run_cli("keys", "import", "--product", "1", dup, "--json", config=cfg.path, check=True).out) == {
        "imported": 1, "duplicates": 5, "blank": 0}

    class Crash(Exception):
        pass

    def crash(done):
        raise Crash
    application = create_app(cfg)
    with application.app_context():
        try:
            reencrypt_card_keys(db.session, load_vault(cfg.security.data_key_file), batch=60, progress=crash)
        except Crash:
            pass
        db.session.remove()
        db.engine.dispose()
    assert key_versions(cfg) == {1: len(keys) - 60, 2: 61}
    out = json.loads(run_cli("key", "rotate", "--json", config=cfg.path, check=True).out)
    assert out["version"] == 2 and out["new_version"] is False and out["card_keys"] == len(keys) - 60
    assert key_versions(cfg) == {2: len(keys) + 1}


def test_a_key_file_missing_a_used_version_is_refused(backend, make_install):
    cfg = make_install(backend)
    populate(cfg, n_keys=10)
    run_cli("key", "rotate", "--prepare", config=cfg.path, check=True)
    keys = parse_key_file(cfg.security.data_key_file.read_text())
    cfg.security.data_key_file.write_text(render_key_file({2: keys[2]}))
    assert_one_line_error(run_cli("key", "rotate", config=cfg.path), "lacks version(s) 1")
    assert key_versions(cfg) == {1: 10}


def test_the_scheduler_retires_old_versions_an_hour_after_the_rotation(backend, make_install):
    import datetime as dt

    from kamengd.app import create_app
    from kamengd.extensions import db
    from kamengd.operations.rotation import retire_old_keys

    cfg = make_install(backend)
    populate(cfg, n_keys=10)
    run_cli("key", "rotate", config=cfg.path, check=True)
    application = create_app(cfg)
    now = dt.datetime.utcnow()
    with application.app_context():
        assert retire_old_keys(db.session, cfg.security.data_key_file, now=now + dt.timedelta(minutes=50)) == {
            "retired": [], "file": None}
        assert retire_old_keys(db.session, cfg.security.data_key_file,
                               now=now + dt.timedelta(minutes=61))["retired"] == [1]
        db.session.remove()
        db.engine.dispose()
    assert sorted(parse_key_file(cfg.security.data_key_file.read_text())) == [2]
    run_cli("audit", "verify", config=cfg.path, check=True)


def test_an_import_with_a_vault_from_before_the_rotation_still_finds_duplicates(backend, make_install):
    import io

    from kamengd.app import create_app
    from kamengd.extensions import db
    from kamengd.inventory.services import import_keys
    from kamengd.vault import load_vault

    cfg = make_install(backend)
    keys, _ = populate(cfg, n_keys=40)
    stale = load_vault(cfg.security.data_key_file)      # loaded before the rotation, knows version 1 only
    run_cli("key", "rotate", config=cfg.path, check=True)
    assert set(key_versions(cfg)) == {2}
    application = create_app(cfg)
    with application.app_context():
        result = import_keys(db.session, stale, product_id=1, fh=io.BytesIO("\n".join(keys).encode()), actor="t")
        db.session.commit()
        db.session.remove()
        db.engine.dispose()
    assert (result.imported, result.duplicates) == (0, len(keys))


def test_two_rotations_at_once_lose_no_key(backend, make_install, tmp_path):
    import subprocess
    import sys

    cfg = make_install(backend)
    keys, _ = populate(cfg, n_keys=300)
    procs = [subprocess.Popen([sys.executable, "-m", "kamengd", "--config", str(cfg.path), "key", "rotate",
                               "--batch-size", "20"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    for p in procs:
        p.communicate(timeout=120)
    run_cli("key", "retire", config=cfg.path, check=True)
    export = tmp_path / "all.txt"
    run_cli("keys", "export", "--product", "1", "--status", "all", "--output", export, config=cfg.path, check=True)
    assert sorted(export.read_text(encoding="utf-8").split()) == sorted(keys)
    run_cli("audit", "verify", config=cfg.path, check=True)


def test_staff_2fa_secrets_follow_the_rotation(backend, make_install):
    """A TOTP secret under the old version keeps the old version in use, is
    re-encrypted by the rotation, and still gives the same codes after retirement."""
    import pyotp

    from kamengd.accounts import auth
    from kamengd.accounts.models import StaffUser
    from kamengd.app import create_app
    from kamengd.context import get_vault
    from kamengd.extensions import db
    from kamengd.operations.rotation import versions_in_use
    from panel_support import make_staff

    cfg = make_install(backend)
    application = create_app(cfg)
    owner = make_staff(application, "owner")
    with application.app_context():
        assert versions_in_use(db.session)[1] >= 2   # the audit seal and the secret
        db.session.remove()
        db.engine.dispose()
    run_cli("key", "rotate", config=cfg.path, check=True)
    run_cli("key", "retire", config=cfg.path, check=True)
    assert sorted(parse_key_file(cfg.security.data_key_file.read_text())) == [2]
    with application.app_context():
        user = db.session.get(StaffUser, owner.id)
        assert user.totp_key_version == 2
        assert auth.totp_secret(get_vault(), user) == owner.secret
        assert pyotp.TOTP(owner.secret).now() == owner.code()
        db.session.remove()
        db.engine.dispose()


def test_secret_settings_follow_the_rotation(backend, make_install):
    """The SMTP password and webhook secret set in the panel keep their key version in use,
    are re-encrypted by the rotation and read the same afterwards."""
    from kamengd.app import create_app
    from kamengd.context import get_vault
    from kamengd.extensions import db
    from kamengd.operations.rotation import versions_in_use
    from kamengd.settings.models import SettingSecret
    from kamengd.settings.services import get_secret, set_secret

    cfg = make_install(backend)
    application = create_app(cfg)
    with application.app_context():
        set_secret(db.session, get_vault(), "smtp.password", "mail-pw-rotated", actor="t")
        set_secret(db.session, get_vault(), "notifications.webhook_secret", "w" * 32, actor="t")
        db.session.commit()
        assert versions_in_use(db.session)[1] >= 3   # the audit seal and the two secrets
        db.session.remove()
        db.engine.dispose()
    run_cli("key", "rotate", config=cfg.path, check=True)
    run_cli("key", "retire", config=cfg.path, check=True)
    assert sorted(parse_key_file(cfg.security.data_key_file.read_text())) == [2]
    with application.app_context():
        assert {r.key_version for r in db.session.scalars(sa.select(SettingSecret))} == {2}
        assert get_secret(db.session, get_vault(), "smtp.password") == "mail-pw-rotated"
        assert get_secret(db.session, get_vault(), "notifications.webhook_secret") == "w" * 32
        db.session.remove()
        db.engine.dispose()

