"""The scheduler: APScheduler ticks, the lease decides, every job run is recorded.

One tick every `scheduler.tick_seconds`: renew (or try to take) the lease;
if this instance is the leader, run each job whose interval has passed. A run
commits once, here, with its record; a job that raises is rolled back, logged
and recorded, and runs again at its next turn; it never stops the scheduler.
The clock is injected, so tests move time by hand.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from collections.abc import Callable

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.blocking import BlockingScheduler

from ..database import is_busy, utcnow
from ..errors import KamengdError
from ..extensions import db
from .jobs import JOBS
from .lease import heartbeat, new_owner_id, release
from .models import JobRun

log = logging.getLogger("kamengd.scheduler")


class Scheduler:
    def __init__(self, app, *, jobs: dict | None = None, clock: Callable[[], dt.datetime] = utcnow,
                 owner: str | None = None):
        config = app.extensions["kamengd.config"].scheduler
        self.app, self.clock = app, clock
        self.jobs = JOBS if jobs is None else jobs
        self.owner = owner or new_owner_id()
        self.lease_seconds, self.tick_seconds = config.lease_seconds, config.tick_seconds
        self.is_leader = False
        self.last_run: dict[str, dt.datetime] = {}
        self._lock = threading.Lock()
        self._aps = None

    def tick(self) -> list[str]:
        """One heartbeat, then the due jobs if leader; returns the jobs run."""
        with self._lock, self.app.app_context():
            try:
                now = self.clock()
                leader = heartbeat(db.session, self.owner, now, self.lease_seconds)
                db.session.commit()   # the lease, in a transaction of its own before any job runs
            except Exception as exc:
                db.session.rollback()
                if is_busy(exc):   # the database is away or locked: no traceback for that
                    log.warning("scheduler heartbeat: database busy (%s); not running jobs this tick",
                                getattr(exc, "orig", None) or exc.__class__.__name__)
                else:
                    log.exception("scheduler heartbeat failed; not running jobs this tick")
                leader = False
            finally:
                db.session.remove()
            if leader != self.is_leader:
                # Taking the lease is what every start does (info); losing it is news (warning).
                log.log(logging.INFO if leader else logging.WARNING, "scheduler %s %s the lease", self.owner,
                        "took" if leader else "lost")
                self.is_leader = leader
                self.last_run.clear()  # a new leader runs every job at once
            if not leader:
                return []
            ran = []
            for name, (fn, interval) in self.jobs.items():
                last = self.last_run.get(name)
                if last is not None and (self.clock() - last).total_seconds() < interval:
                    continue
                self.last_run[name] = self.clock()
                self._run(name, fn)
                ran.append(name)
            return ran

    def _run(self, name: str, fn) -> None:
        started = self.clock()
        try:
            counts = fn(db.session) or {}
            self._record(name, started, "ok", counts)
            db.session.commit()   # the run's work and its record, together
        except Exception as exc:
            db.session.rollback()
            if is_busy(exc):
                log.warning("job %s: database busy (%s); it runs again at its next turn", name,
                            getattr(exc, "orig", None) or exc.__class__.__name__)
            elif isinstance(exc, KamengdError):   # says what went wrong itself (a full disk, a gateway away)
                log.error("job %s failed: %s; it runs again at its next turn", name, exc.message)
            else:
                log.exception("job %s failed; it runs again at its next turn", name)
            try:
                self._record(name, started, "error", {}, f"{exc.__class__.__name__}: {exc}"[:1000])
                db.session.commit()   # the failed run's record alone: its work was rolled back
            except Exception as again:
                db.session.rollback()
                log.warning("could not record the run of job %s", name, exc_info=not is_busy(again))
        finally:
            db.session.remove()

    def _record(self, name: str, started: dt.datetime, outcome: str, counts: dict, error: str | None = None):
        db.session.add(JobRun(job=name, owner=self.owner, started_at=started, finished_at=self.clock(),
                              outcome=outcome, counts=json.dumps(counts, default=str), error=error))

    def stop(self) -> None:
        if self._aps is not None and self._aps.running:
            self._aps.shutdown(wait=False)
        with self.app.app_context():
            try:
                release(db.session, self.owner)
                db.session.commit()   # a clean stop hands the lease over at once
            except Exception:
                db.session.rollback()
            finally:
                db.session.remove()

    def _schedule(self, aps):
        aps.add_job(self.tick, "interval", seconds=self.tick_seconds, id="kamengd-tick",
                    max_instances=1, coalesce=True, next_run_time=dt.datetime.now(dt.UTC))
        self._aps = aps
        return aps

    def start_background(self) -> None:
        self._schedule(BackgroundScheduler(daemon=True)).start()

    def run_forever(self) -> None:
        self._schedule(BlockingScheduler()).start()
