"""The audit log: newest first with filters, and the chain check (itself audited)."""
from __future__ import annotations

import datetime as dt
import json

from flask import flash, redirect, render_template, request, url_for
from flask_babel import gettext as _

from ..context import get_vault
from ..audit.services import find_entries, record, verify
from ..extensions import db
from ..transaction import read_only
from .blueprint import bp
from .helpers import PAGE_SIZE, local_day_start, page_number
from .session import actor, client_ip

DETAILS_SHOWN = 400   # characters of an entry's details on the page


def compact_details(raw: str) -> str:
    """{"a":1,"b":"x"} -> 'a=1, b=x': short, one line; the page escapes it."""
    try:
        data = json.loads(raw or "{}")
    except ValueError:
        data = raw
    if isinstance(data, dict):
        text = ", ".join(f"{k}={v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)}"
                         for k, v in data.items())
    else:
        text = str(data)
    return text if len(text) <= DETAILS_SHOWN else text[:DETAILS_SHOWN] + "…"


def _filters() -> tuple[dict[str, str], dict]:
    """The filters as typed (for the form and the pager) and as query arguments; a bad date is
    reported and left out."""
    args = request.args
    shown = {"actor": args.get("actor", "").strip()[:128], "action": args.get("action", "").strip()[:64],
             "target": args.get("target", "").strip()[:255], "since": args.get("since", "").strip()[:10],
             "until": args.get("until", "").strip()[:10]}
    query = {"actor": shown["actor"], "action": shown["action"], "target": shown["target"]}
    if shown["since"]:
        query["since"] = local_day_start(shown["since"])
        if query["since"] is None:
            flash(_("From: a day as YYYY-MM-DD."), "error")
            shown["since"] = ""
    if shown["until"]:
        start = local_day_start(shown["until"])
        if start is None:
            flash(_("To: a day as YYYY-MM-DD."), "error")
            shown["until"] = ""
        else:   # the whole day, to the next local midnight
            next_day = dt.date.fromisoformat(shown["until"]) + dt.timedelta(days=1)
            query["until"] = local_day_start(next_day.isoformat())
    return {k: v for k, v in shown.items() if v}, query


@bp.get("/audit")
def audit():
    read_only()
    shown, query = _filters()
    page = page_number()
    entries = find_entries(db.session, **query, limit=PAGE_SIZE + 1, offset=(page - 1) * PAGE_SIZE)
    return render_template("panel/audit_log.html", entries=entries[:PAGE_SIZE], has_next=len(entries) > PAGE_SIZE,
                           page=page, filters=shown, details=compact_details)


@bp.post("/audit/verify")
def audit_verify():
    # Read the whole chain in a snapshot of its own (SQLite: no write lock held while it
    # runs, whatever the sign-in check began), then record the check.
    who = actor()
    db.session.commit()   # ends the sign-in check's transaction: the chain is read in a snapshot
    read_only()
    result = verify(db.session, get_vault())
    db.session.commit()   # ends the snapshot: the record below takes the write lock (the request commits it)
    record(db.session, "audit.verify", actor=who, target="audit_log", source_ip=client_ip(),
           details={"ok": result.ok, "entries": result.entries, "bad_entry": result.bad_entry_id,
                    "problem": result.problem})
    if result.ok:
        flash(_("The audit log is intact: %(n)s entries checked.", n=result.entries), "success")
    else:
        flash(_("The audit log is NOT intact: %(problem)s", problem=result.problem), "error")
    return redirect(url_for("panel.audit"), code=303)
