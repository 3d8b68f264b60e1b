"""Agents' own webhooks (kamengd/docs/agent-api.md, "Webhooks"), on both databases: added
through the signed API and the portal, delivered by the real notification job to real
local HTTP receivers, signed with each webhook's own secret, retried with backoff with
every attempt shown to the agent; nobody else's events, nothing after a removal, and
another agent's webhooks out of reach."""
import datetime as dt
import json
import re
import secrets

import pytest
import sqlalchemy as sa

from conftest import PASSWORD
from kamengd.agents import services as agents
from kamengd.agents import webhooks
from kamengd.notifications.email import BACKOFF_SECONDS
from kamengd.notifications.models import WEBHOOK_REMOVED, Event, Notification
from test_agent_api import network, signed  # noqa: F401 (fixture)
from test_agent_portal import flashes, post, set_password, sign_in
from test_notifications import Receiver, verify

ORDER_PATH = "/api/v1/agent/orders"


@pytest.fixture
def receivers():
    """receivers() -> a new local webhook receiver; every one is closed after the test."""
    made = []

    def factory():
        made.append(Receiver())
        return made[-1]
    yield factory
    for r in made:
        r.close()


@pytest.fixture
def cleanup(app):
    """Webhooks the test adds are removed after it (their receivers close): later runs of the
    job in the shared database send nothing to a closed port."""
    added = []
    yield added
    from kamengd.agents.models import AgentWebhook
    from kamengd.extensions import db

    with app.app_context():
        db.session.execute(sa.update(AgentWebhook).where(AgentWebhook.id.in_(added),
                                                         AgentWebhook.removed_at.is_(None))
                           .values(removed_at=dt.datetime.utcnow()))
        db.session.execute(sa.update(Notification).where(Notification.agent_webhook_id.in_(added),
                                                         Notification.status == "pending")
                           .values(status="failed", last_error=WEBHOOK_REMOVED))
        db.session.commit()
        db.session.remove()


def add_hook(client, agent, url, events, cleanup):
    answer = signed(client, agent, "POST", "/api/v1/agent/webhooks", {"url": url, "events": events})
    assert answer.status_code == 201, answer.get_json()
    made = answer.get_json()
    cleanup.append(made["id"])
    return made


def run_job(app) -> dict:
    """The scheduler's notifications job, run until every event is fanned out (other tests
    leave events behind in the shared database, more than one run takes)."""
    from kamengd.extensions import db
    from kamengd.scheduler.jobs import send_notifications

    total = {}
    with app.app_context():
        try:
            for _ in range(200):
                for name, count in send_notifications(db.session).items():
                    total[name] = total.get(name, 0) + count
                if not db.session.scalar(sa.select(sa.func.count()).select_from(Event)
                                         .where(Event.dispatched.is_(False))):
                    break
            db.session.commit()
            return total
        finally:
            db.session.remove()


def make_due(app, webhook_id):
    """Time passes: the webhook's deliveries waiting for a retry are due now."""
    from kamengd.extensions import db

    with app.app_context():
        db.session.execute(sa.update(Notification).where(Notification.agent_webhook_id == webhook_id,
                                                         Notification.status == "pending")
                           .values(next_attempt_at=dt.datetime.utcnow() - dt.timedelta(seconds=1)))
        db.session.commit()
        db.session.remove()


def buy(client, agent, product, quantity=1):
    answer = signed(client, agent, "POST", ORDER_PATH, {"product_id": product, "quantity": quantity},
                    idempotency_key=secrets.token_hex(8))
    assert answer.status_code == 201, answer.get_json()
    return answer.get_json()


def received(receiver):
    """(headers, body, parsed body) of each request the receiver got."""
    return [(headers, body, json.loads(body)) for _path, headers, body in receiver.requests]


def staff(app, work):
    from kamengd.extensions import db

    with app.app_context():
        try:
            result = work(db.session)
            db.session.commit()
            return result
        finally:
            db.session.remove()


def credit(app, agent_id, cents):
    from kamengd.agents.models import Agent

    staff(app, lambda s: agents.credit_balance(s, s.get(Agent, agent_id), cents, reason="top-up", actor="t"))


def refund(app, order_no):
    from kamengd.orders.staff import refund_order

    staff(app, lambda s: refund_order(s, order_no=order_no, reason="staff note: buyer 13800138000", actor="t"))


def test_an_agents_order_delivered_and_refunded_reach_its_webhook_signed(backend, app, client, network, receivers,
                                                                         cleanup):
    alice, bob = network["alice"], network["bob"]
    mine, theirs = receivers(), receivers()
    hook = add_hook(client, alice, mine.url, ["order.delivered", "order.refunded"], cleanup)
    assert hook["events"] == ["order.delivered", "order.refunded"] and hook["secret"].startswith("whsec_")
    assert add_hook(client, bob, theirs.url, "*", cleanup)["events"] == ["*"]
    order = buy(client, alice, network["product"], 2)
    run_job(app)
    [(headers, body, data)] = received(mine)
    assert headers["X-Kamengd-Event"] == "order.delivered" and data["event"] == "order.delivered"
    assert verify(headers, body, hook["secret"])                    # its own secret signs it
    assert not verify(headers, body, alice["secret"])               # not the API key's
    assert not verify(headers, body.replace(b"17.82", b"17.83"), hook["secret"])
    assert data["data"]["order_no"] == order["order_no"] and data["data"]["agent_id"] == alice["id"]
    assert data["data"]["amount"] == "17.82" and "keys" not in data["data"]
    assert not any(k in body.decode() for k in order["keys"])       # never a key in a delivery
    refund(app, order["order_no"])
    run_job(app)
    assert [d["event"] for _h, _b, d in received(mine)] == ["order.delivered", "order.refunded"]
    headers, body, data = received(mine)[1]
    assert verify(headers, body, hook["secret"])
    assert data["data"]["refunded_to_balance"] == "17.82" and data["data"]["status"] == "refunded"
    assert "13800138000" not in body.decode()                      # the staff's reason stays with staff
    assert theirs.requests == []                                    # bob hears nothing of alice's
    run_job(app)
    assert len(mine.requests) == 2                                  # nothing twice


def test_balance_changes_are_announced_with_the_balance_after(backend, app, client, network, receivers, cleanup):
    alice, bob = network["alice"], network["bob"]
    mine, theirs = receivers(), receivers()
    hook = add_hook(client, alice, mine.url, ["balance.changed"], cleanup)
    add_hook(client, bob, theirs.url, ["order.delivered", "order.refunded"], cleanup)
    run_job(app)
    assert mine.requests == []                      # the 30.00 credited before it was added: no history
    credit(app, alice["id"], 500)
    run_job(app)
    [(headers, body, data)] = received(mine)
    assert headers["X-Kamengd-Event"] == "balance.changed" and verify(headers, body, hook["secret"])
    change = data["data"]
    assert (change["account"], change["amount"], change["balance_after"], change["currency"]) == \
        ("available", "5.00", "35.00", "CNY")
    assert change["agent_id"] == alice["id"] and change["memo"] == "top-up" and change["entry_id"] > 0
    order = buy(client, alice, network["product"])            # 8.91
    run_job(app)
    later = [d["data"] for _h, _b, d in received(mine)[1:]]
    assert [(c["amount"], c["balance_after"]) for c in later] == [("-8.91", "26.09")]
    assert order["order_no"] in later[0]["cause"] and later[0]["entry_id"] > change["entry_id"]
    assert signed(client, alice, "GET", "/api/v1/agent/balance").get_json()["balance"] == "26.09"
    run_job(app)
    assert len(mine.requests) == 2                             # each entry once
    assert theirs.requests == []                               # bob: neither alice's money nor orders
    # Staff never get balance.changed: it is made dispatched, for the agent's webhook only.
    from kamengd.config import build_config
    from kamengd.errors import ConfigError
    from kamengd.settings.services import EVENT_CHOICES
    from test_config import MINIMAL

    with app.app_context():
        from kamengd.extensions import db
        events = db.session.scalars(sa.select(Event).where(Event.type == "balance.changed")).all()
        assert events and all(e.dispatched for e in events)
        assert not db.session.scalar(sa.select(sa.func.count()).select_from(Notification).where(
            Notification.event_id.in_([e.id for e in events]), Notification.channel != webhooks.CHANNEL))
        db.session.remove()
    assert "balance.changed" not in EVENT_CHOICES and "order.refunded" in EVENT_CHOICES
    with pytest.raises(ConfigError, match="only to agents' own webhooks"):
        build_config({**MINIMAL, "notifications": {"email_events": ["balance.changed"]}}, env={})
    assert build_config({**MINIMAL, "notifications": {"email_events": ["order.refunded"]}},
                        env={}).notifications.email_events == ("order.refunded",)


def test_a_failing_receiver_is_retried_with_backoff_and_every_attempt_is_shown(backend, app, client, network,
                                                                               receivers, cleanup):
    alice = network["alice"]
    mine = receivers()
    mine.script = [500]
    hook = add_hook(client, alice, mine.url, ["order.delivered"], cleanup)
    order = buy(client, alice, network["product"])
    assert run_job(app)["failed"] >= 1
    path = f"/api/v1/agent/webhooks/{hook['id']}/deliveries"
    [first] = signed(client, alice, "GET", path).get_json()["deliveries"]
    assert (first["event"], first["order_no"], first["status"], first["last_error"]) == \
        ("order.delivered", order["order_no"], "pending", "HTTP 500")
    [attempt] = first["attempts"]
    assert (attempt["attempt"], attempt["outcome"], attempt["status_code"]) == (1, "error", 500)
    waited = dt.datetime.fromisoformat(first["next_attempt_at"][:-1]) - dt.datetime.fromisoformat(attempt["at"][:-1])
    assert abs(waited.total_seconds() - BACKOFF_SECONDS[0]) < 5      # the first backoff: a minute
    run_job(app)
    assert len(mine.requests) == 1                                      # not due yet
    make_due(app, hook["id"])
    run_job(app)
    assert len(mine.requests) == 2
    (h1, b1, _d1), (h2, b2, _d2) = received(mine)
    assert h1["X-Kamengd-Delivery"] == h2["X-Kamengd-Delivery"] and b1 == b2     # the same delivery again
    assert verify(h2, b2, hook["secret"])
    [done] = signed(client, alice, "GET", path).get_json()["deliveries"]
    assert (done["status"], done["last_error"], done["next_attempt_at"]) == ("sent", None, None)
    assert [(a["attempt"], a["outcome"], a["status_code"]) for a in done["attempts"]] == \
        [(1, "error", 500), (2, "ok", 200)]
    assert all(a["duration_ms"] >= 0 and a["at"].endswith("Z") for a in done["attempts"])
    # The portal shows the same, every attempt.
    set_password(app, alice["id"])
    assert sign_in(client, alice["username"]).status_code == 302
    page = client.get("/agent/webhooks").get_data(as_text=True)
    row = re.search(rf'<tr id="delivery-{done["id"]}">(.*?)</tr>', page, re.S).group(1)
    assert order["order_no"] in row and "#1 " in row and "HTTP 500" in row and "#2 " in row and "HTTP 200" in row
    assert mine.url in page and hook["secret"] not in page


def test_a_removed_webhook_gets_nothing_more(backend, app, client, network, receivers, cleanup):
    alice = network["alice"]
    mine = receivers()
    mine.script = [503]
    hook = add_hook(client, alice, mine.url, "*", cleanup)
    buy(client, alice, network["product"])
    run_job(app)
    assert {h["X-Kamengd-Event"] for _p, h, _b in mine.requests} == {"order.delivered", "balance.changed"}
    failed_once = len(mine.requests)
    removed = signed(client, alice, "DELETE", f"/api/v1/agent/webhooks/{hook['id']}")
    assert removed.status_code == 200 and removed.get_json() == {"id": hook["id"], "removed": True}
    assert signed(client, alice, "GET", "/api/v1/agent/webhooks").get_json() == {"webhooks": []}
    again = signed(client, alice, "DELETE", f"/api/v1/agent/webhooks/{hook['id']}")
    assert again.status_code == 404
    # What waited for a retry is given up, saying why; new events make no delivery at all.
    deliveries = signed(client, alice, "GET", f"/api/v1/agent/webhooks/{hook['id']}/deliveries").get_json()
    waiting = [d for d in deliveries["deliveries"] if d["last_error"] == WEBHOOK_REMOVED]
    assert waiting and all(d["status"] == "failed" for d in waiting)
    make_due(app, hook["id"])
    buy(client, alice, network["product"])
    credit(app, alice["id"], 100)
    run_job(app)
    assert len(mine.requests) == failed_once


def test_a_webhook_removed_while_a_delivery_waits_is_not_sent_to(backend, app, client, network, receivers, cleanup):
    """Removed behind the job's back (between its runs): the delivery is dropped when due."""
    from kamengd.agents.models import AgentWebhook

    alice = network["alice"]
    mine = receivers()
    mine.script = [500]
    hook = add_hook(client, alice, mine.url, ["order.delivered"], cleanup)
    buy(client, alice, network["product"])
    run_job(app)
    assert len(mine.requests) == 1
    staff(app, lambda s: s.execute(sa.update(AgentWebhook).where(AgentWebhook.id == hook["id"])
                                   .values(removed_at=dt.datetime.utcnow())))
    make_due(app, hook["id"])
    assert run_job(app)["dropped"] == 1
    assert len(mine.requests) == 1
    [note] = signed(client, alice, "GET", f"/api/v1/agent/webhooks/{hook['id']}/deliveries").get_json()["deliveries"]
    assert (note["status"], note["last_error"], len(note["attempts"])) == ("failed", WEBHOOK_REMOVED, 1)


@pytest.mark.parametrize("body, words", [
    ({"url": "ftp://hooks.example/h"}, "http:// or https://"),
    ({"url": "https://"}, "with a host"),
    ({"url": "https://user:pw@hooks.example/h"}, "no user name or password"),
    ({"url": "https://hooks.example:port/h"}, "port is not a number"),
    ({"url": "http://[::1/h"}, "IPv6 host goes in brackets"),
    ({"url": "https://hooks.example/" + "a" * 500}, "at most 500 characters"),
    ({"url": "https://hooks.example/a b"}, "printable ASCII only"),
    ({"url": "https://例子.example/h"}, "printable ASCII only"),
    ({}, "url: the address"),
    ({"url": 7}, "url: the address"),
    ({"url": "https://hooks.example/h", "events": ["order.nope"]}, "unknown order.nope"),
    ({"url": "https://hooks.example/h", "events": []}, "at least one of"),
    ({"url": "https://hooks.example/h", "events": [1]}, "events: a list of"),
    ({"url": "mailto:x", "events": ["stock.low"]}, "is required; events: unknown stock.low"),
])
def test_a_bad_address_or_event_is_a_clear_400_and_stores_nothing(backend, app, client, network, body, words):
    alice = network["alice"]
    answer = signed(client, alice, "POST", "/api/v1/agent/webhooks", body)
    assert answer.status_code == 400, answer.get_json()
    assert words in answer.get_json()["error"]["message"]
    assert signed(client, alice, "GET", "/api/v1/agent/webhooks").get_json() == {"webhooks": []}


def test_at_most_five_webhooks_and_only_with_the_account_scope(backend, app, client, network, cleanup):
    from kamengd.agents.models import Agent
    from kamengd.context import get_vault

    alice = network["alice"]
    for i in range(webhooks.MAX_WEBHOOKS):
        add_hook(client, alice, f"https://hooks.example/{i}", "*", cleanup)
    sixth = signed(client, alice, "POST", "/api/v1/agent/webhooks", {"url": "https://hooks.example/6"})
    assert sixth.status_code == 409 and "at most 5 webhooks" in sixth.get_json()["error"]["message"]
    listed = signed(client, alice, "GET", "/api/v1/agent/webhooks").get_json()["webhooks"]
    assert [w["url"] for w in listed] == [f"https://hooks.example/{i}" for i in range(5)]
    assert all(set(w) == {"id", "url", "events", "created_at"} for w in listed)      # never the secret
    key_id, secret = staff(app, lambda s: agents.issue_api_key(s, get_vault(), s.get(Agent, alice["id"]),
                                                               actor="t", scopes=["read"]))
    reader = {**alice, "key_id": key_id, "secret": secret}
    assert signed(client, reader, "GET", "/api/v1/agent/webhooks").status_code == 200
    refused = signed(client, reader, "DELETE", f"/api/v1/agent/webhooks/{listed[0]['id']}")
    assert refused.status_code == 403
    assert len(signed(client, alice, "GET", "/api/v1/agent/webhooks").get_json()["webhooks"]) == 5


def test_an_agent_cannot_see_or_remove_anothers_webhook(backend, app, client, network, receivers, cleanup):
    alice, bob = network["alice"], network["bob"]
    hook = add_hook(client, alice, receivers().url, "*", cleanup)
    assert signed(client, bob, "GET", "/api/v1/agent/webhooks").get_json() == {"webhooks": []}
    for method, path in (("DELETE", f"/api/v1/agent/webhooks/{hook['id']}"),
                         ("GET", f"/api/v1/agent/webhooks/{hook['id']}/deliveries"),
                         ("GET", "/api/v1/agent/webhooks/99999999/deliveries")):
        answer = signed(client, bob, method, path)
        assert answer.status_code == 404 and answer.get_json()["error"]["code"] == "not_found", (method, path)
    set_password(app, bob["id"])
    assert sign_in(client, bob["username"]).status_code == 302
    assert post(client, f"/agent/webhooks/{hook['id']}/remove", page="/agent/webhooks").status_code == 303
    assert "webhook not found" in flashes(client, "/agent/webhooks")
    assert client.get(f"/agent/webhooks?webhook={hook['id']}").status_code == 404
    assert [w["id"] for w in signed(client, alice, "GET", "/api/v1/agent/webhooks").get_json()["webhooks"]] == \
        [hook["id"]]


def test_a_member_adds_a_webhook_in_the_portal_and_hears_of_its_balance(backend, app, client, receivers, cleanup):
    from kamengd.agents.models import AgentWebhook

    name = f"m-{secrets.token_hex(3)}"
    member_id = staff(app, lambda s: agents.create_member(s, username=name, password=PASSWORD, actor="t").id)
    mine = receivers()
    assert sign_in(client, name).status_code == 302
    assert 'href="/agent/webhooks"' in client.get("/agent/").get_data(as_text=True)
    page = client.get("/agent/webhooks").get_data(as_text=True)
    answer = client.post("/agent/webhooks", data={"csrf_token": re.search(r'name="csrf_token" value="([^"]+)"',
                                                                          page).group(1),
                                                  "url": mine.url, "event": ["balance.changed"]})
    assert answer.status_code == 200
    shown = answer.get_data(as_text=True)
    secret = re.search(r'id="webhook-secret" class="secret">([^<]+)<', shown).group(1)
    assert mine.url in shown and "balance.changed" in shown
    cleanup.extend(staff(app, lambda s: s.scalars(sa.select(AgentWebhook.id)
                                                 .where(AgentWebhook.agent_id == member_id)).all()))
    assert secret not in client.get("/agent/webhooks").get_data(as_text=True)      # shown once
    credit(app, member_id, 1234)
    run_job(app)
    [(headers, body, data)] = received(mine)
    assert verify(headers, body, secret) and data["data"]["balance_after"] == "12.34"
    # A form with a mistake says so and adds nothing.
    assert post(client, "/agent/webhooks", {"url": "ftp://x", "event": ["balance.changed"]},
                page="/agent/webhooks").status_code == 303
    assert "http:// or https://" in flashes(client, "/agent/webhooks")
    assert post(client, f"/agent/webhooks/{cleanup[-1]}/remove", page="/agent/webhooks").status_code == 303
    assert "Webhook removed" in flashes(client, "/agent/webhooks")
    assert staff(app, lambda s: s.scalar(sa.select(sa.func.count()).select_from(AgentWebhook).where(
        AgentWebhook.agent_id == member_id, AgentWebhook.removed_at.is_(None)))) == 0


@pytest.mark.backends("mysql")   # SQLite has one writer at a time: entries commit in the order of their ids
def test_the_cursor_never_passes_a_movement_still_being_written(backend, app, client, network, receivers, cleanup):
    """MariaDB: a movement of the agent's pending commission is written but not committed when
    a later credit (a higher entry id) commits. The job announces neither until the first one
    commits, then both, in order: nothing is skipped past."""
    from sqlalchemy.orm import Session

    from kamengd.extensions import db
    from kamengd.ledger import services as ledger

    alice = network["alice"]
    mine = receivers()
    add_hook(client, alice, mine.url, ["balance.changed"], cleanup)
    with app.app_context():
        slow = Session(bind=db.engine.connect())
        try:
            pending = ledger.agent_refs(slow, alice["id"])["pending"]
            ledger.post(slow, cause=f"commission:slow-{secrets.token_hex(4)}", kind="commission", actor="t",
                        legs=[(pending, 100), (ledger.shop_ref(slow, "shop:commission"), -100)])
            credit(app, alice["id"], 200)              # commits first, with a higher entry id
            run_job(app)
            assert mine.requests == []                 # the pending account is being moved: wait
            slow.commit()
        finally:
            slow.close()
    run_job(app)
    changes = [d["data"] for _h, _b, d in received(mine)]
    assert [(c["account"], c["amount"]) for c in changes] == [("pending", "1.00"), ("available", "2.00")]
    assert changes[0]["entry_id"] < changes[1]["entry_id"]


def test_webhook_secrets_follow_a_key_rotation(backend, make_install):
    """A webhook's sealed secret keeps its key version in use, is sealed again by the rotation
    and signs the same afterwards, once the old version is retired."""
    from kamengd.agents.models import AgentWebhook
    from kamengd.app import create_app
    from kamengd.context import get_vault
    from kamengd.extensions import db
    from kamengd.operations.rotation import retire_unused, rotate, versions_in_use
    from kamengd.vault import parse_key_file

    cfg = make_install(backend)
    application = create_app(cfg)
    key_file = cfg.security.data_key_file
    with application.app_context():
        member = agents.create_member(db.session, username="hooked", password=PASSWORD, actor="t")
        row, secret = webhooks.add_webhook(db.session, get_vault(), member, url="https://hooks.example/h",
                                           events="*", actor="t", allow_private=True)   # no DNS here
        db.session.commit()
        used = versions_in_use(db.session)[1]
        db.session.execute(sa.delete(AgentWebhook))
        assert versions_in_use(db.session)[1] == used - 1          # the webhook's secret counts
        db.session.rollback()
        rotate(db.session, key_file)
        db.session.commit()
        assert retire_unused(db.session, key_file)[0] == [1]
        assert sorted(parse_key_file(key_file.read_text())) == [2]
        assert db.session.get(AgentWebhook, row.id).secret_key_version == 2
        assert webhooks.webhook_secret(db.session, get_vault(), row.id) == secret.encode()
        db.session.remove()
        db.engine.dispose()


def test_by_default_an_agents_webhook_never_goes_to_this_machine_or_its_network(make_install, backend):
    """notifications.agent_webhook_private off (the default): loopback, private and
    link-local addresses are refused when added, and a stored one is refused at send time
    (a name may resolve elsewhere later); a public one is accepted."""
    import dataclasses

    from kamengd.agents.models import Agent
    from kamengd.app import create_app
    from kamengd.context import get_vault
    from kamengd.errors import InvalidRequest
    from kamengd.extensions import db
    from kamengd.validation import private_target

    config = make_install(backend)
    assert config.notifications.agent_webhook_private is False
    app = create_app(dataclasses.replace(config, ratelimit=dataclasses.replace(config.ratelimit, enabled=False)))
    for url in ("http://127.0.0.1:8080/hook", "http://localhost/hook", "http://10.1.2.3/", "http://192.168.0.9/",
                "http://169.254.169.254/latest/meta-data/", "http://[::1]/", "http://[::ffff:127.0.0.1]/",
                "http://0.0.0.0/", "http://no-such-host.invalid/"):
        assert private_target(url), url
    assert private_target("http://8.8.8.8/hook") is None
    with app.app_context():
        level, _ = agents.set_level(db.session, name="ssrf", discount="1", actor="t")
        agent = agents.create_agent(db.session, username="ssrf-agent", level=level.name, actor="t")
        db.session.commit()
        with pytest.raises(InvalidRequest, match="private or local"):
            webhooks.add_webhook(db.session, get_vault(), agent, url="http://127.0.0.1:9/x", events="*", actor="t")
        db.session.rollback()
        agent = db.session.scalars(sa.select(Agent).where(Agent.username == "ssrf-agent")).one()
        assert not db.session.scalars(sa.select(webhooks.AgentWebhook).where(
            webhooks.AgentWebhook.agent_id == agent.id)).all()
        # Stored while allowed (or resolving elsewhere then): refused when it is sent to.
        agent = agents.create_agent(db.session, username="ssrf-agent2", level=level.name, actor="t")
        row, _secret = webhooks.add_webhook(db.session, get_vault(), agent, url="http://127.0.0.1:9/x", events="*",
                                            actor="t", allow_private=True)
        db.session.commit()
        agents.credit_balance(db.session, agent, 500, reason="t", actor="t")
        db.session.commit()
        from kamengd.scheduler.jobs import send_notifications
        send_notifications(db.session)
        db.session.commit()
        errors = db.session.scalars(sa.select(Notification.last_error).where(
            Notification.agent_webhook_id == row.id)).all()
        assert errors and all(e.startswith("refused: the host resolves to a private or local address")
                              for e in errors), errors
        db.session.remove()
