import threading

import pytest
import sqlalchemy as sa

from conftest import run_concurrently
from kamengd.audit.models import AuditEntry
from kamengd.audit.services import record, verify


@pytest.fixture
def chain(session):
    """Five fresh entries at the end of the (rolled back) log; returns their ids."""
    ids = [record(session, "test.event", actor="cli:tester", target=f"thing:{i}", source_ip="203.0.113.9",
                  details={"n": i, "名字": "值"}).id for i in range(5)]
    assert verify(session).ok
    return ids


def test_intact_chain(backend, session, chain):
    result = verify(session)
    assert result.ok and result.entries >= 5
    last = session.get(AuditEntry, chain[-1])
    assert last.actor == "cli:tester" and last.source_ip == "203.0.113.9" and len(last.entry_hash) == 64


def test_altered_entry_is_named(backend, session, chain):
    session.execute(sa.text("UPDATE audit_log SET details = :d WHERE id = :id"),
                    {"d": '{"n":99}', "id": chain[2]})
    result = verify(session)
    assert not result.ok and result.bad_entry_id == chain[2]
    assert "altered" in result.problem


def test_altered_timestamp_or_actor_is_detected(backend, session, chain):
    session.execute(sa.text("UPDATE audit_log SET actor = 'cli:someone-else' WHERE id = :id"), {"id": chain[1]})
    assert verify(session).bad_entry_id == chain[1]


def test_deleted_entry_is_detected(backend, session, chain):
    session.execute(sa.text("DELETE FROM audit_log WHERE id = :id"), {"id": chain[2]})
    result = verify(session)
    assert not result.ok and result.bad_entry_id == chain[3]
    assert "missing" in result.problem


def test_deleted_newest_entry_is_detected(backend, session, chain):
    session.execute(sa.text("DELETE FROM audit_log WHERE id = :id"), {"id": chain[-1]})
    result = verify(session)
    assert not result.ok and "removed" in result.problem and result.bad_entry_id == chain[-2]


def test_reordered_entries_are_detected(backend, session, chain):
    a, b = chain[1], chain[3]
    cols = "seq, created_at, actor, action, target, source_ip, details, prev_hash, entry_hash"
    rows = {i: session.execute(sa.text(f"SELECT {cols} FROM audit_log WHERE id = :id"), {"id": i}).one()._asdict()
            for i in (a, b)}
    # Swap the two entries' whole contents (seq first moved aside: it is unique).
    session.execute(sa.text("UPDATE audit_log SET seq = -seq WHERE id IN (:a, :b)"), {"a": a, "b": b})
    for target, source in ((a, b), (b, a)):
        values = rows[source]
        assignments = ", ".join(f"{c} = :{c}" for c in values)
        session.execute(sa.text(f"UPDATE audit_log SET {assignments} WHERE id = :id"), {**values, "id": target})
    result = verify(session)
    assert not result.ok and result.bad_entry_id == a


def test_concurrent_appends_keep_one_chain(backend, app):
    """Writers on separate connections append one after another, never forking the chain."""
    from kamengd.extensions import db

    errors = []

    def writer(n):
        try:
            with app.app_context():
                for i in range(10):
                    record(db.session, "test.concurrent", actor=f"cli:w{n}", details={"i": i})
                    db.session.commit()
                db.session.remove()
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)

    run_concurrently(*(lambda n=n: writer(n) for n in range(4)))
    assert errors == []
    with app.app_context():
        assert verify(db.session).ok
        db.session.remove()


def rechain(session):
    """What an attacker with write access to the database can do: recompute every hash."""
    from kamengd.audit.services import GENESIS_HASH, compute_hash

    prev = GENESIS_HASH
    rows = session.execute(sa.text("SELECT id, seq, created_at, actor, action, target, source_ip, details "
                                   "FROM audit_log ORDER BY id")).all()
    for row in rows:
        created_at = row.created_at
        if isinstance(created_at, str):  # SQLite returns text through a raw query
            import datetime as dt
            created_at = dt.datetime.fromisoformat(created_at)
        h = compute_hash(prev, row.seq, created_at, row.actor, row.action, row.target, row.source_ip,
                         row.details)
        session.execute(sa.text("UPDATE audit_log SET prev_hash = :p, entry_hash = :h WHERE id = :id"),
                        {"p": prev, "h": h, "id": row.id})
        prev = h
    session.execute(sa.text("UPDATE audit_head SET last_hash = :h WHERE id = 1"), {"h": prev})


def test_a_rewritten_chain_breaks_the_seal(backend, session, vault, chain):
    assert verify(session, vault).ok
    session.execute(sa.text("UPDATE audit_log SET actor = 'cli:innocent' WHERE id = :id"), {"id": chain[1]})
    rechain(session)
    assert verify(session).ok  # the bare SHA-256 chain cannot tell
    result = verify(session, vault)
    assert not result.ok and "seal does not match" in result.problem


def test_an_emptied_log_is_not_intact(backend, session, vault):
    session.execute(sa.text("DELETE FROM audit_log"))
    session.execute(sa.text("UPDATE audit_head SET seq = 0, last_hash = :g, seal = NULL"), {"g": "0" * 64})
    result = verify(session, vault)
    assert not result.ok and "empty" in result.problem


def test_appends_during_a_check_are_not_a_false_alarm(backend, app, monkeypatch):
    """verify reads the head first and checks up to it; a shop keeps logging meanwhile."""
    from kamengd.audit import services
    from kamengd.extensions import db

    real_compute = services.compute_hash
    appended = []

    def append_from_another_connection():
        with app.app_context():
            record(db.session, "test.during_verify", actor="cli:other")
            db.session.commit()
            db.session.remove()

    def compute_and_append(*args):
        if not appended:
            appended.append(1)
            t = threading.Thread(target=append_from_another_connection)
            t.start()
            t.join()
        return real_compute(*args)

    monkeypatch.setattr(services, "compute_hash", compute_and_append)
    with app.app_context():
        db.session.connection(execution_options={"kamengd_readonly": True})
        result = verify(db.session)
        db.session.remove()
    assert appended and result.ok, result.problem
