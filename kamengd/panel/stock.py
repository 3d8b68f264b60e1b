"""Card-key stock: counts per product, imports (pasted or uploaded), audited downloads.

Imports go through kamengd.inventory.services.import_keys_in_chunks: the
whole upload is checked before anything is written (a bad file imports
nothing), then written in parts of IMPORT_CHUNK_LINES lines, each committed
on its own, so SQLite's write lock is never held for a whole big file.
An upload is read from the temporary file Werkzeug spooled it to, never
as one string.
"""
from __future__ import annotations

import io

from flask import (Response, current_app, flash, redirect, render_template, request, stream_with_context,
                   url_for)
from flask_babel import gettext as _
from werkzeug.exceptions import RequestEntityTooLarge

from ..context import get_config, get_vault
from ..catalog import services as catalog
from ..database import utcnow
from ..errors import InvalidRequest, KamengdError, N_
from ..http_errors import error_response
from ..extensions import db
from ..inventory import importer, services as inventory
from ..inventory.models import KEY_STATUSES
from ..transaction import read_only
from .blueprint import bp
from .helpers import PAGE_SIZE, page_number, flash_errors
from .session import actor, client_ip

IMPORT_CHUNK_LINES = inventory.CHUNK_LINES   # tests make it small
# What the import form offers; "" detects UTF-8 / UTF-16 with a BOM / GB18030.
ENCODINGS = ("", "utf-8", "gb18030", "utf-16", "utf-16-le", "utf-16-be")
EXPORT_BUFFER = 64 * 1024   # characters sent per piece of a download


def status_names() -> dict[str, str]:
    return {"available": _("Available"), "reserved": _("Reserved"), "sold": _("Sold"), "void": _("Void"),
            "pool": _("In agents' pools"), "all": _("All keys")}


@bp.get("/stock")
def stock():
    read_only()
    query = request.args.get("q", "").strip()[:catalog.MAX_SEARCH]
    page = page_number()
    rows, total = catalog.list_products(db.session, query=query, page=page, page_size=PAGE_SIZE)
    counts = inventory.key_counts(db.session, [p.id for p, _c in rows])
    present = {status for per_product in counts.values() for status in per_product}
    statuses = list(KEY_STATUSES[:3]) + sorted(present - set(KEY_STATUSES[:3]))
    return render_template("panel/stock_list.html", rows=rows, counts=counts, statuses=statuses,
                           names=status_names(), total=total, page=page, pages=max(1, -(-total // PAGE_SIZE)),
                           query=query)


def _import_page(product_id: int, status: int = 200, encoding: str = ""):
    product = catalog.get_product(db.session, product_id)
    counts = inventory.key_counts(db.session, [product.id]).get(product.id, {})
    limits = {"upload_mib": (current_app.config.get("MAX_CONTENT_LENGTH") or 0) // (1024 * 1024),
              "paste_kb": (current_app.config.get("MAX_FORM_MEMORY_SIZE") or 0) // 1000,
              "key_length": get_config().inventory.max_key_length}
    return render_template("panel/stock_import.html", product=product, counts=counts, names=status_names(),
                           encodings=ENCODINGS, encoding=encoding, limits=limits), status


def _import_source(encoding: str) -> tuple[io.IOBase, str | None]:
    """The keys to import: the uploaded file (as spooled) or the pasted text."""
    upload = request.files.get("file")
    pasted = request.form.get("keys", "")
    has_file = upload is not None and bool(upload.filename)
    if has_file and pasted.strip():
        raise InvalidRequest("Paste keys or choose a file, not both; nothing was imported.")
    if has_file:
        return upload.stream, encoding or None
    if not pasted.strip():
        raise InvalidRequest("Paste keys (one per line) or choose a file; nothing was imported.")
    # A browser sends the text in the page's encoding, UTF-8.
    return io.BytesIO(pasted.encode("utf-8")), "utf-8"


# The importer's hints name the CLI's --encoding; here it is the form's field.
WEB_HINTS = {
    importer.UNDECODABLE: N_("line %(line)s: the file does not decode as %(encoding)s; nothing imported "
                             "(choose the file's encoding)"),
    importer.UNDECODABLE_AUTO: N_("line %(line)s: the file does not decode as UTF-8 or GB18030; nothing imported "
                                  "(choose the file's encoding)"),
    importer.CONTROL_CHARACTERS: N_("line %(line)s: key contains control characters (wrong encoding? a UTF-16 "
                                    "file needs a BOM or the file encoding utf-16-le); nothing imported"),
}


def _web_hint(exc: KamengdError) -> KamengdError:
    if exc.template in WEB_HINTS:
        return InvalidRequest(WEB_HINTS[exc.template], **exc.params)
    return exc


@bp.route("/stock/<int:product_id>/import", methods=["GET", "POST"])
def stock_import(product_id: int):
    if request.method == "GET":
        read_only()
        return _import_page(product_id)
    product = catalog.get_product(db.session, product_id)
    name, who, ip = product.name, actor(), client_ip()
    cfg = get_config().inventory
    encoding = request.form.get("encoding", "")
    try:
        if encoding not in ENCODINGS:
            raise InvalidRequest("Choose an encoding from the list.")
        fh, encoding_used = _import_source(encoding)
        # End the transaction the sign-in check opened: no lock is held while
        # the file is read through; each part of the import takes its own (and commits it).
        db.session.commit()
        result = inventory.import_keys_in_chunks(
            db.session, get_vault(), product_id=product_id, fh=fh, actor=who, encoding=encoding_used,
            max_key_length=cfg.max_key_length, batch_size=cfg.import_batch_size,
            chunk_lines=IMPORT_CHUNK_LINES, source_ip=ip)
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(_web_hint(exc))
        read_only()
        return _import_page(product_id, exc.http_status, encoding if encoding in ENCODINGS else "")
    flash(_("%(name)s: imported %(imported)s keys; %(duplicates)s duplicates skipped, %(blank)s blank lines; "
            "%(delivered)s waiting orders delivered.", name=name, imported=result.imported,
            duplicates=result.duplicates, blank=result.blank, delivered=result.delivered), "success")
    return redirect(url_for("panel.stock"), code=303)


@bp.errorhandler(RequestEntityTooLarge)
def _too_large(exc):
    """An upload over the limit: say which limit, on the import page (after the sign-in check)."""
    if request.endpoint != "panel.stock_import" or not request.view_args:
        return error_response("invalid_request", exc.description, 413)
    flash(_("That is too large to import: a file may have up to %(mib)s MiB, pasted text up to %(kb)s KB. "
            "Nothing was imported; split the file, or use the command line (kamengd keys import).",
            mib=(current_app.config.get("MAX_CONTENT_LENGTH") or 0) // (1024 * 1024),
            kb=(current_app.config.get("MAX_FORM_MEMORY_SIZE") or 0) // 1000), "error")
    return redirect(url_for("panel.stock_import", product_id=request.view_args["product_id"]), code=303)


def _export_page(product_id: int, status: int = 200, form: dict | None = None):
    product = catalog.get_product(db.session, product_id)
    counts = inventory.key_counts(db.session, [product.id]).get(product.id, {})
    return render_template("panel/stock_export.html", product=product, counts=counts, names=status_names(),
                           statuses=inventory.EXPORT_STATUSES, reason_limits=inventory.EXPORT_REASON,
                           form=form or {"status": "available", "reason": ""}), status


def _key_text(product_id: int, statuses: list[str] | None):
    # The download reads a snapshot: no write lock while a slow client takes the file.
    # (Here, in the stream: the request's own transaction ends before the first piece.)
    read_only()
    vault, piece = get_vault(), []
    size = 0
    for key in inventory.iter_plaintext_keys(db.session, vault, product_id, statuses):
        piece.append(key)
        size += len(key) + 1
        if size >= EXPORT_BUFFER:
            yield "\n".join(piece) + "\n"
            piece, size = [], 0
    if piece:
        yield "\n".join(piece) + "\n"


@bp.route("/stock/<int:product_id>/export", methods=["GET", "POST"])
def stock_export(product_id: int):
    if request.method == "GET":
        read_only()
        return _export_page(product_id)
    form = {"status": request.form.get("status", "")[:20],
            "reason": request.form.get("reason", "")[:inventory.EXPORT_REASON[1] + 100]}
    try:
        inventory.start_key_export(db.session, product_id=product_id, status=form["status"],
                                           reason=form["reason"], actor=actor(), source_ip=client_ip())
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
        read_only()
        return _export_page(product_id, exc.http_status, form)
    # The request commits the entry before the answer, so before the first key is sent.
    statuses = inventory.export_statuses(form["status"])
    filename = f"keys-product{product_id}-{form['status']}-{utcnow():%Y%m%d-%H%M%S}.txt"
    response = Response(stream_with_context(_key_text(product_id, statuses)), mimetype="text/plain")
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/stock/<int:product_id>/keys")
def stock_keys(product_id: int):
    """A product's keys, masked, by status and batch; its import batches, each of which can
    be taken off sale (void)."""
    read_only()
    product = catalog.get_product(db.session, product_id)
    status = request.args.get("status", "")
    status = status if status in KEY_STATUSES else ""
    raw_batch = request.args.get("batch", "")
    batch = int(raw_batch) if raw_batch.isascii() and raw_batch.isdigit() and len(raw_batch) < 10 else None
    page = page_number()
    keys, total = inventory.list_keys(db.session, get_vault(), product.id, status=status, import_id=batch, page=page)
    filters = {k: v for k, v in (("status", status), ("batch", batch)) if v}
    return render_template("panel/stock_keys.html", product=product, keys=keys, total=total, page=page,
                           pages=max(1, -(-total // inventory.KEYS_PAGE)), filters=filters, names=status_names(),
                           batches=inventory.import_batches(db.session, product.id), statuses=KEY_STATUSES)


@bp.post("/stock/<int:product_id>/batches/<int:import_id>/void")
def stock_void_batch(product_id: int, import_id: int):
    try:
        result = inventory.void_batch(db.session, product_id=product_id, import_id=import_id,
                                      reason=request.form.get("reason", ""), actor=actor(), source_ip=client_ip())
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
    else:
        flash(_("Batch #%(batch)s: %(n)s available keys taken off sale (void); %(reserved)s reserved and "
                "%(sold)s sold keys left as they are.", batch=import_id, n=result["voided"],
                reserved=result["reserved"], sold=result["sold"]), "success")
    return redirect(url_for("panel.stock_keys", product_id=product_id), code=303)
