"""One leader per database: the lease, job runs, failover; in-process and as real processes."""
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa

from conftest import run_cli
from kamengd.scheduler.models import JobRun
from kamengd.scheduler.runner import Scheduler


class Clock:
    def __init__(self):
        self.now = dt.datetime(2030, 1, 1)

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += dt.timedelta(seconds=seconds)


@pytest.fixture
def fresh_app(make_install, backend):
    from kamengd.app import create_app

    return create_app(make_install(backend))


def runs(app):
    from kamengd.extensions import db

    with app.app_context():
        rows = db.session.execute(sa.select(JobRun.job, JobRun.owner, JobRun.outcome, JobRun.error)
                                  .order_by(JobRun.id)).all()
        db.session.remove()
    return rows


def test_only_the_leader_runs_jobs_and_a_dead_one_is_replaced(backend, fresh_app):
    clock = Clock()
    calls = []
    jobs = {"count": (lambda session: calls.append(1) or {"n": len(calls)}, 10)}
    a = Scheduler(fresh_app, jobs=jobs, clock=clock, owner="A")
    b = Scheduler(fresh_app, jobs=jobs, clock=clock, owner="B")
    assert a.tick() == ["count"] and b.tick() == []
    clock.advance(5)
    assert a.tick() == [] and b.tick() == []   # not due yet; B still not leader
    clock.advance(6)
    assert a.tick() == ["count"] and b.tick() == []
    # A dies: no more heartbeats. Within the lease B is refused, after it B takes over.
    clock.advance(fresh_app.extensions["kamengd.config"].scheduler.lease_seconds - 1)
    assert b.tick() == [] and not b.is_leader
    clock.advance(2)
    assert b.tick() == ["count"] and b.is_leader
    assert a.tick() == [] and not a.is_leader  # A comes back: it lost the lease
    assert [(r.job, r.owner, r.outcome) for r in runs(fresh_app)] == [
        ("count", "A", "ok"), ("count", "A", "ok"), ("count", "B", "ok")]
    # The takeover is an event (scheduler.failover); a clean stop releases the lease and is not.
    b.stop()
    clock.advance(1)
    assert a.tick() == ["count"] and a.is_leader
    (failover,) = failovers(fresh_app)
    assert failover["owner"] == "B" and failover["previous_owner"] == "A"
    assert failover["seconds_since_its_heartbeat"] == fresh_app.extensions["kamengd.config"].scheduler.lease_seconds + 1


def failovers(app):
    from kamengd.extensions import db
    from kamengd.notifications.models import Event

    with app.app_context():
        found = [json.loads(p) for p in db.session.scalars(
            sa.select(Event.payload).where(Event.type == "scheduler.failover").order_by(Event.id))]
        db.session.remove()
    return found


def test_a_failing_job_is_recorded_and_retried(backend, fresh_app):
    clock = Clock()
    attempts = []

    def flaky(session):
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("gateway down")
        return {"ok": 1}

    s = Scheduler(fresh_app, jobs={"flaky": (flaky, 10), "steady": (lambda session: {"x": 1}, 10)},
                  clock=clock, owner="A")
    assert s.tick() == ["flaky", "steady"]
    clock.advance(10)
    s.tick()
    recorded = runs(fresh_app)
    assert [(r.job, r.outcome) for r in recorded] == [("flaky", "error"), ("steady", "ok"),
                                                      ("flaky", "ok"), ("steady", "ok")]
    assert "RuntimeError: gateway down" in recorded[0].error


def test_real_jobs_and_the_jobs_command(backend, make_install):
    cfg = make_install(backend)
    out = run_cli("scheduler", "--once", config=cfg.path, check=True).out
    from kamengd.scheduler.jobs import JOBS
    assert out.strip() == "leader; ran: " + ", ".join(JOBS)
    listed = json.loads(run_cli("jobs", "--json", "--limit", "50", config=cfg.path, check=True).out)
    assert {r["job"] for r in listed["runs"]} == set(JOBS)
    assert all(r["outcome"] == "ok" for r in listed["runs"]) and listed["leader"]["owner"]
    from kamengd.app import create_app
    health = create_app(cfg).test_client().get("/healthz").get_json()
    assert health["scheduler"]["leader"] == listed["leader"]["owner"]
    assert health["scheduler"]["heartbeat_age_seconds"] < 60


def test_two_scheduler_processes_one_database(mysql_backend, make_install):
    """Exactly one of two `kamengd scheduler` processes runs jobs; kill it, the other takes over."""
    cfg = make_install(mysql_backend)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAMENGD_")}
    env.update(KAMENGD_SCHEDULER_LEASE_SECONDS="3", KAMENGD_SCHEDULER_TICK_SECONDS="1")
    procs = [subprocess.Popen([sys.executable, "-m", "kamengd", "--config", str(cfg.path), "scheduler"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
    from kamengd.database import make_engine
    engine = make_engine(cfg.database_url, pooled=False)

    def owners_since(start):
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT DISTINCT owner FROM job_runs WHERE started_at >= :s"),
                                {"s": start}).scalars().all()
    try:
        # Both processes started together with a 1 s tick: once the leader has
        # renewed its lease for 3 s, the other has asked for it as often, and
        # must have run nothing.
        deadline, held = time.monotonic() + 30, 0.0
        while time.monotonic() < deadline and held < 3:
            time.sleep(0.1)
            with engine.connect() as conn:
                lease = conn.execute(sa.text("SELECT acquired_at, heartbeat_at FROM scheduler_lease")).first()
            if lease is not None and lease.acquired_at is not None and lease.heartbeat_at is not None:
                held = (lease.heartbeat_at - lease.acquired_at).total_seconds()
        assert held >= 3, "no scheduler kept the lease"
        with engine.connect() as conn:
            owners = conn.execute(sa.text("SELECT DISTINCT owner FROM job_runs")).scalars().all()
        assert len(owners) == 1, owners
        leader_pid = int(owners[0].split(":")[1])
        leader = next(p for p in procs if p.pid == leader_pid)
        other = next(p for p in procs if p.pid != leader_pid)
        killed_at = dt.datetime.utcnow()
        leader.send_signal(signal.SIGKILL)
        leader.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            new = [o for o in owners_since(killed_at) if o != owners[0]]
            if new:
                break
            time.sleep(0.2)
        took_over = time.monotonic() - (deadline - 20)
        assert new and int(new[0].split(":")[1]) == other.pid, "no takeover"
        assert took_over < 3 + 1 + 3, f"takeover took {took_over:.1f} s"  # lease + tick + slack
        print(f"takeover after {took_over:.1f} s (lease 3 s, tick 1 s)")
        with engine.connect() as conn:
            (payload,) = conn.execute(sa.text("SELECT payload FROM events WHERE type = 'scheduler.failover'")).scalars()
        assert json.loads(payload)["previous_owner"] == owners[0] and json.loads(payload)["owner"] == new[0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(timeout=20)
        engine.dispose()


def test_old_history_is_pruned(backend, session):
    from kamengd.operations.history import EVENTS_DAYS, JOB_RUNS_DAYS, prune
    from kamengd.notifications.models import Event, Notification, NotificationAttempt

    now = dt.datetime.utcnow()   # rows other tests committed to the shared database are recent: kept
    old_run = now - dt.timedelta(days=JOB_RUNS_DAYS + 1)
    session.add_all([JobRun(job="j", owner="o", started_at=old_run, outcome="ok"),
                     JobRun(job="j", owner="o", started_at=now - dt.timedelta(days=1), outcome="ok")])
    old = now - dt.timedelta(days=EVENTS_DAYS + 1)
    done, waiting, recent = (Event(type="order.paid", payload="{}", created_at=t, dispatched=True)
                             for t in (old, old, now))
    session.add_all([done, waiting, recent])
    session.flush()
    sent = Notification(event_id=done.id, channel="webhook", target="http://x", status="sent", attempts=1,
                        next_attempt_at=old)
    pending = Notification(event_id=waiting.id, channel="webhook", target="http://x", status="pending",
                           attempts=3, next_attempt_at=now)
    session.add_all([sent, pending])
    session.flush()
    session.add(NotificationAttempt(notification_id=sent.id, attempt=1, started_at=old, duration_ms=5, outcome="ok"))
    session.flush()
    before = {m: session.scalar(sa.select(sa.func.count()).select_from(m))
              for m in (JobRun, Event, Notification, NotificationAttempt)}
    from kamengd.accounts.models import LoginThrottle

    session.add_all([LoginThrottle(scope="ip", key="198.51.100.1", failures=3, last_failure_at=now - dt.timedelta(days=2)),
                     LoginThrottle(scope="ip", key="198.51.100.2", failures=3, last_failure_at=now)])
    session.flush()
    counts = prune(session, now=now)
    assert counts["job_runs"] == 1 and counts["events"] == 1 and counts["login_throttles"] >= 1
    assert session.get(LoginThrottle, ("ip", "198.51.100.1")) is None      # a day without failures: forgotten
    assert session.get(LoginThrottle, ("ip", "198.51.100.2")) is not None
    after = {m: session.scalar(sa.select(sa.func.count()).select_from(m))
             for m in (JobRun, Event, Notification, NotificationAttempt)}
    assert {m.__name__: before[m] - after[m] for m in before} == {
        "JobRun": 1, "Event": 1, "Notification": 1, "NotificationAttempt": 1}
    assert session.get(Event, waiting.id) is not None    # still being retried: kept
