"""The verifier terminal (核销端): a phone-first page at a store's till.

A verifier picks the store (if bound to several), types or scans a code, sees what it is
worth, and redeems it on confirmation. Plain forms work without JavaScript; terminal.js
scans (BarcodeDetector where the browser has it, else the vendored jsQR) and fills the code.
The redeem endpoint also answers JSON (`Accept: application/json`), for scanners and the bench.
kamengd.vouchers.services decides everything and records every attempt.
"""
from __future__ import annotations

from flask import abort, flash, jsonify, redirect, render_template, request, session as cookie, url_for
from flask_babel import gettext as _

from ..context import get_vault
from ..database import utcnow
from ..errors import KamengdError, NotFound
from ..extensions import db, limiter
from ..money import format_cents
from ..vouchers import services as vouchers
from .blueprint import bp
from .helpers import error_text, flash_errors, when
from .session import client_ip, current_staff

STORE_KEY = "terminal_store"


def refusal_text(reason: str | None, last=None) -> str:
    texts = {
        "unknown": _("No voucher has this code."),
        "typo": _("This is not a valid code: a character is wrong or missing. Check it and type it again."),
        "not_sold": _("This code has not been sold: it cannot be redeemed."),
        "used_up": _("This voucher has been used up."),
        "not_enough": _("This voucher has not enough left for that."),
        "expired": _("This voucher has expired."),
        "not_yet": _("This voucher is not valid yet."),
        "void": _("This voucher was voided."),
        "refunded": _("This voucher's order was refunded: it cannot be redeemed."),
        "other_store": _("This voucher cannot be redeemed at this store."),
    }
    text = texts.get(reason or "", reason or "")
    if reason in ("used_up", "not_enough") and last is not None:
        text += " " + _("Last redeemed at %(store)s, %(when)s.", store=last[0], when=_when(last[1]))
    return text


def _when(value) -> str:
    return when(value, seconds=True)


def _stores():
    user = current_staff()
    stores = vouchers.stores_for(db.session, user)
    return user, stores


def _chosen(stores, wanted=None):
    """The store the terminal works at: the one asked for (None when it is not one of this
    staff member's), else the one remembered, else the only one."""
    ids = {s.id: s for s in stores}
    if wanted not in (None, ""):
        if not isinstance(wanted, (int, str)) or isinstance(wanted, bool):
            return None
        try:
            return ids.get(int(wanted))
        except (TypeError, ValueError, OverflowError):
            return None
    remembered = cookie.get(STORE_KEY)
    if isinstance(remembered, int) and remembered in ids:
        return ids[remembered]
    return stores[0] if len(stores) == 1 else None


def _page(user, stores, store, *, seen=None, outcome=None, status=200):
    recent = vouchers.recent_redemptions(db.session, [store.id] if store else [], limit=10)
    managed = {s.id for s in stores if vouchers.may_undo_at(db.session, user, s.id)}
    window = vouchers.undo_minutes(db.session)
    return render_template("panel/terminal.html", stores=stores, store=store, seen=seen, outcome=outcome,
                           recent=recent, managed=managed, undo_window=window, now=utcnow(),
                           refusal_text=refusal_text), status


@bp.get("/terminal")
def terminal():
    user, stores = _stores()
    store = _chosen(stores, request.args.get("store"))
    done = vouchers.redemption_outcome(db.session, request.args.get("redeemed"), [store.id]) \
        if store is not None and request.args.get("redeemed") else None
    return _page(user, stores, store, seen=done.seen if done else None, outcome=done)


@bp.post("/terminal/store")
def terminal_store():
    user, stores = _stores()
    store = _chosen(stores, request.form.get("store"))
    if store is None:
        abort(404)
    cookie[STORE_KEY] = store.id
    return redirect(url_for("panel.terminal"), code=303)


@bp.post("/terminal/look")
@limiter.limit("120/minute")
def terminal_look():
    user, stores = _stores()
    store = _chosen(stores, request.form.get("store"))
    if store is None:
        flash(_("Choose the store first."), "error")
        return _page(user, stores, None, status=400)
    seen = vouchers.look_up(db.session, get_vault(), request.form.get("code", "")[:80], store_id=store.id)
    if request.accept_mimetypes.best == "application/json":
        return jsonify(_seen_json(seen))
    return _page(user, stores, store, seen=seen, status=200 if seen.voucher is not None else 404)


def _seen_json(seen) -> dict:
    out = seen.as_dict()
    if seen.refusal:
        out["message"] = refusal_text(seen.refusal, seen.last)
    return out


@bp.post("/terminal/redeem")
# Per staff member: far above any till (and a code is 75 random bits: no guessing at 50 a second).
@limiter.limit("3000/minute", key_func=lambda: f"terminal:{getattr(current_staff(), 'id', request.remote_addr)}")
def terminal_redeem():
    """Redeem: uses (a uses voucher) or an amount (a stored value). A refusal is recorded
    (committed here, before the 409 that would roll it back) and said."""
    wants_json = request.is_json or request.accept_mimetypes.best == "application/json"
    data = request.get_json(silent=True) if request.is_json else request.form
    if not isinstance(data, dict) and not hasattr(data, "get"):
        data = {}
    user, stores = _stores()
    store = _chosen(stores, data.get("store"))
    if store is None:
        if wants_json:
            return jsonify({"error": {"code": "not_found", "message": _("Choose the store first.")}}), 404
        flash(_("Choose the store first."), "error")
        return _page(user, stores, None, status=400)
    try:
        outcome = vouchers.redeem(db.session, get_vault(), typed=str(data.get("code", ""))[:80], store_id=store.id,
                                  user=user, uses=data.get("uses"), amount=data.get("amount"), ours=True)
    except KamengdError as exc:
        db.session.rollback()
        if wants_json:
            return jsonify({"error": {"code": exc.code, "message": error_text(exc)}}), exc.http_status
        flash_errors(exc)
        seen = vouchers.look_up(db.session, get_vault(), str(data.get("code", ""))[:80], store_id=store.id)
        return _page(user, stores, store, seen=seen, status=exc.http_status)
    if not outcome.seen.ok:
        # The refusal is kept: committed here, as the 409 would roll it back (the answer is built
        # first, from what was read in the transaction).
        answer = jsonify({"redeemed": False, **_seen_json(outcome.seen)}) if wants_json else \
            _page(user, stores, store, seen=outcome.seen, outcome=outcome, status=409)[0]
        db.session.commit()
        return answer, 409
    if wants_json:
        return jsonify({"redeemed": True, "redemption_id": outcome.redemption_id, "uses": outcome.uses,
                        "amount": format_cents(outcome.amount_cents) if outcome.amount_cents else None,
                        **_seen_json(outcome.seen)})
    # Sent on to a page that shows it: reloading that page never redeems a second time.
    return redirect(url_for("panel.terminal", store=store.id, redeemed=outcome.redemption_id), code=303)


@bp.post("/terminal/undo/<int:redemption_id>")
@limiter.limit("30/minute")
def terminal_undo(redemption_id: int):
    user, stores = _stores()
    try:
        vouchers.undo(db.session, redemption_id=redemption_id, user=user, reason=request.form.get("reason", "")[:300],
                      source_ip=client_ip())
    except NotFound:
        abort(404)
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
        return redirect(url_for("panel.terminal"), code=303)
    flash(_("Redemption %(id)s undone: its use or value is back on the voucher.", id=redemption_id), "success")
    return redirect(url_for("panel.terminal"), code=303)
