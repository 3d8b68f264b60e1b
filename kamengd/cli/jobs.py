from __future__ import annotations

import json

import click

from ..audit.services import cli_actor, record
from ..database import utcnow
from ..extensions import db
from ..scheduler.jobs import JOBS
from ..scheduler.models import JobRun
from ..reports.scheduler import job_runs, run_seconds
from ..scheduler.lease import leader_info
from .group import cli, emit, json_option, with_app


@cli.command()
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--job", help="Only this job.")
@json_option
@with_app(readonly=True)
def jobs(limit, job, as_json):
    """Recent job runs, newest first, and the scheduler's leader."""
    runs = [{"job": r.job, "owner": r.owner, "started_at": r.started_at.isoformat(timespec="seconds") + "Z",
             "seconds": run_seconds(r), "outcome": r.outcome, "counts": json.loads(r.counts), "error": r.error}
            for r in job_runs(db.session, job=job, limit=limit)]
    lead = leader_info(db.session)
    leader = {"owner": lead.owner,
              "heartbeat_at": lead.heartbeat_at.isoformat(timespec="seconds") + "Z" if lead.heartbeat_at else None}
    lines = [f"leader: {lead.owner or 'none'} (heartbeat {leader['heartbeat_at'] or 'never'})"]
    lines += [f"{r['started_at']}  {r['job']:<22} {r['outcome']:<6} {json.dumps(r['counts'])}"
              + (f"  {r['error']}" if r["error"] else "") for r in runs]
    emit(as_json, {"leader": leader, "runs": runs}, "\n".join(lines))


@cli.command("run-job")
@click.argument("name", type=click.Choice(sorted(JOBS)))
@json_option
@with_app
def run_job(name, as_json):
    """Run one scheduler job now, in this process, as the scheduler would (its run is recorded;
    the jobs are safe to run beside the scheduler's). Audited."""
    fn, _interval = JOBS[name]
    started = utcnow()
    counts = fn(db.session) or {}
    db.session.add(JobRun(job=name, owner=cli_actor()[:128], started_at=started, finished_at=utcnow(),
                          outcome="ok", counts=json.dumps(counts, default=str)))
    record(db.session, "job.run", actor=cli_actor(), target=f"job:{name}", details={"counts": counts})
    emit(as_json, {"job": name, "counts": counts}, f"{name}: {json.dumps(counts, default=str)}")
