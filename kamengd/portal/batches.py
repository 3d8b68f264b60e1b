"""Batch orders from a file (CSV or XLSX): a template to fill in, the upload, each line's
result, and the result as a file with the keys (kamengd.agents.batches decides and places).

The upload form carries a key made when the page was drawn: the same form sent twice (a
double click, a refresh) is the same batch and buys nothing twice; a new page, a new batch.
"""
from __future__ import annotations

import secrets

from flask import Response, redirect, render_template, request, url_for

from ..agents import batches
from ..agents.auth import caller_for_agent
from ..context import get_vault
from ..errors import InvalidRequest, KamengdError
from ..extensions import db, limiter
from ..storefront.i18n import t
from .blueprint import bp, current_agent, flash_errors

MIME = {"csv": "text/csv; charset=utf-8",
        "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"}


def _download(data: bytes, kind: str, name: str) -> Response:
    return Response(data, mimetype=MIME[kind], headers={
        "Content-Disposition": f'attachment; filename="{name}.{kind}"', "Cache-Control": "no-store"})


@bp.get("/batches")
def batches_page():
    agent = current_agent()
    return render_template("portal/batches.html", batches=batches.recent_batches(db.session, agent.id),
                           form_key=secrets.token_urlsafe(16), max_lines=batches.MAX_LINES)


@bp.get("/batches/template.<kind>")
def batch_template(kind: str):
    if kind not in MIME:
        return redirect(url_for("portal.batches_page"), code=303)
    return _download(batches.template_file(kind), kind, "kamengd-batch-template")


@bp.post("/batches")
@limiter.limit("20/minute")
def batch_upload():
    agent = current_agent()
    upload = request.files.get("file")
    try:
        if upload is None or not upload.filename:
            raise InvalidRequest("choose a CSV or XLSX file")
        lines = batches.read_upload(upload.filename, upload.read(batches.MAX_UPLOAD_BYTES + 1))
        form_key = request.form.get("form_key", "")
        caller = caller_for_agent(db.session, agent.id)
        batch_id, _new = batches.start_batch(db.session, caller, idempotency_key="upload:" + form_key[:40],
                                             lines=lines, backorder=request.form.get("backorder") == "1",
                                             source="upload", filename=upload.filename, spend=False)
        batches.run_batch(db.session, get_vault(), caller, batch_id,
                          backorder=request.form.get("backorder") == "1")
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
        return redirect(url_for("portal.batches_page"), code=303)
    return redirect(url_for("portal.batch_detail", batch_id=batch_id), code=303)


@bp.get("/batches/<int:batch_id>")
def batch_detail(batch_id: int):
    agent = current_agent()
    view = batches.batch_view(db.session, get_vault(), agent.id, batch_id)
    for line in view["lines"]:   # the page links to each order; the keys are on its page and in the file
        (line.get("order") or {}).pop("keys", None)
    return render_template("portal/batch_detail.html", batch=view)


@bp.get("/batches/<int:batch_id>/result.<kind>")
def batch_result(batch_id: int, kind: str):
    agent = current_agent()
    if kind not in MIME:
        return redirect(url_for("portal.batch_detail", batch_id=batch_id), code=303)
    view = batches.batch_view(db.session, get_vault(), agent.id, batch_id)
    return _download(batches.result_file(view, kind), kind, f"kamengd-batch-{batch_id}")
