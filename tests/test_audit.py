import threading

import pytest
import sqlalchemy as sa

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

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with app.app_context():
        assert verify(db.session).ok
        db.session.remove()
