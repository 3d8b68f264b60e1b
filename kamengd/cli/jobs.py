from __future__ import annotations

import json

import click

from ..extensions import db
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
