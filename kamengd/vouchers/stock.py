"""Making voucher codes: stock for sale, and batches issued outside any order (B2B).

Each code is written as a card key (sealed like an imported key: kamengd.vault) and a voucher
row beside it (its lookup hash and what it holds), in the caller's transaction. Codes for sale
are `available` keys, reserved and sold by checkout as any key; a batch's codes are sold at
once (to nobody's order) and active, to be exported as a file.
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..audit.services import record
from ..catalog.models import Product
from ..catalog.services import get_product
from ..database import utcnow
from ..errors import Conflict, InvalidRequest, NotFound
from ..inventory.models import CardKey, KeyImport
from ..orders.services import deliver_waiting_orders
from ..validation import spreadsheet_cell
from ..vault import Vault
from . import codes
from .models import Voucher, VoucherBatch, VoucherTerms
from .services import valid_window

# Codes written per INSERT: a batch of 100,000 is twenty statements of each kind.
CHUNK = 5000
MAX_GENERATE = 1_000_000
REASON = (4, 200)   # voucher_batches.reason holds 200


def _terms(session: Session, product_id: int) -> tuple[Product, VoucherTerms]:
    product = get_product(session, product_id)
    terms = session.get(VoucherTerms, product_id)
    if terms is None:
        raise InvalidRequest("product %(product_id)s is not a voucher product (set its voucher terms first)",
                             product_id=product_id)
    if terms.valid_until is not None and terms.valid_until <= utcnow():
        raise InvalidRequest("product %(product_id)s: its vouchers are valid until a time already past; change "
                             "the terms first", product_id=product_id)
    return product, terms


def _count(count) -> int:
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_GENERATE:
        raise InvalidRequest("count: a whole number from 1 to %(max)s", max=MAX_GENERATE)
    return count


def _lock_product(session: Session, product_id: int) -> None:
    # As an import does: a key rotation re-fingerprints under the same lock (SQLite's write lock
    # serialises the two already).
    if session.get_bind().dialect.name != "sqlite":
        session.execute(sa.select(Product.id).where(Product.id == product_id).with_for_update())


def _write_codes(session: Session, vault: Vault, terms: VoucherTerms, *, count: int, run_id: int,
                 status: str, voucher_values: dict, now: dt.datetime) -> list[str]:
    """Write `count` new codes; returns them (grouped) for a batch's file, else nothing kept."""
    vault.refresh()
    made: list[str] = []
    keys, vouchers = CardKey.__table__, Voucher.__table__
    left = count
    uses = terms.uses if terms.kind == "uses" else 0
    value = terms.value_cents if terms.kind == "value" else 0
    while left:
        n = min(left, CHUNK)
        chunk = list(dict.fromkeys(codes.generate_many(terms.alphabet, terms.code_length, n)))
        shown = [codes.grouped(c) for c in chunk]
        sealed = list(vault.seal_card_keys(terms.product_id, [s.encode("ascii") for s in shown]))
        session.execute(keys.insert(), [
            {"product_id": terms.product_id, "status": status, "import_id": run_id, "ciphertext": ct, "nonce": nonce,
             "key_version": vault.current_version, "fingerprint": fp,
             "sold_at": now if status == "sold" else None}
            for nonce, fp, ct in sealed])
        ids = dict(session.execute(sa.select(keys.c.fingerprint, keys.c.id).where(
            keys.c.product_id == terms.product_id, keys.c.fingerprint.in_([fp for _n, fp, _c in sealed]))).all())
        session.execute(vouchers.insert(), [
            {"card_key_id": ids[bytes(fp)], "product_id": terms.product_id, "lookup": vault.voucher_lookups(c)[0][1],
             "key_version": vault.current_version, "uses_left": uses, "value_left_cents": value,
             "created_at": now, **voucher_values}
            for c, (_n, fp, _ct) in zip(chunk, sealed)])
        if voucher_values.get("batch_id"):
            made.extend(shown)
        left -= len(chunk)
    return made


def generate_stock(session: Session, vault: Vault, *, product_id: int, count, actor: str,
                   source_ip: str | None = None, now: dt.datetime | None = None) -> int:
    """Make `count` codes for sale (available stock). Paid orders waiting for codes get them."""
    now = now or utcnow()
    count = _count(count)
    _product, terms = _terms(session, product_id)
    _lock_product(session, product_id)
    run = KeyImport(product_id=product_id, actor=actor, encoding="voucher codes", imported=count)
    session.add(run)
    session.flush()
    try:
        with session.begin_nested():
            _write_codes(session, vault, terms, count=count, run_id=run.id, status="available",
                         voucher_values={"status": "stock"}, now=now)
    except sa.exc.IntegrityError:   # a code made twice (one in 2^75): nothing of this run stays
        raise Conflict("a generated code was already in use; nothing was generated, try again") from None
    delivered = deliver_waiting_orders(session, product_id)
    record(session, "voucher.generate", actor=actor, target=f"product:{product_id}", source_ip=source_ip,
           details={"count": count, "import_id": run.id, "orders_delivered": delivered})
    return count


@dataclass
class Issued:
    batch: VoucherBatch
    codes: list[str] = field(repr=False, default_factory=list)


def issue_batch(session: Session, vault: Vault, *, product_id: int, count, reason, actor: str,
                source_ip: str | None = None, now: dt.datetime | None = None) -> Issued:
    """Codes issued at once for a company (never on sale), active from now; the codes come back
    to the caller to write into its file (audited here, with the reason)."""
    now = now or utcnow()
    count = _count(count)
    reason = " ".join(str(reason or "").split())
    if not REASON[0] <= len(reason) <= REASON[1]:
        raise InvalidRequest("reason: say why the codes are issued (%(low)s to %(high)s characters)",
                             low=REASON[0], high=REASON[1])
    _product, terms = _terms(session, product_id)
    _lock_product(session, product_id)
    run = KeyImport(product_id=product_id, actor=actor, encoding="voucher batch", imported=count)
    session.add(run)
    session.flush()
    batch = VoucherBatch(product_id=product_id, count=count, reason=reason, actor=actor, import_id=run.id,
                         created_at=now)
    session.add(batch)
    session.flush()
    valid_from, valid_until = valid_window(terms, now)
    try:
        with session.begin_nested():
            made = _write_codes(session, vault, terms, count=count, run_id=run.id, status="sold",
                                voucher_values={"status": "active", "batch_id": batch.id, "issued_at": now,
                                                "valid_from": valid_from, "valid_until": valid_until},
                                now=now)
    except sa.exc.IntegrityError:
        raise Conflict("a generated code was already in use; nothing was issued, try again") from None
    record(session, "voucher.batch", actor=actor, target=f"product:{product_id}", source_ip=source_ip,
           details={"batch_id": batch.id, "count": count, "reason": reason})
    return Issued(batch, made)


def batch_codes(session: Session, vault: Vault, batch_id: int) -> tuple[VoucherBatch, list[tuple[str, Voucher]]]:
    """A batch's codes (plaintext) with their rows, in the order they were made."""
    batch = session.get(VoucherBatch, batch_id) if isinstance(batch_id, int) and 0 < batch_id < 2**31 else None
    if batch is None:
        raise NotFound("batch %(batch_id)s not found", batch_id=batch_id)
    rows = session.execute(sa.select(CardKey, Voucher).join(Voucher, Voucher.card_key_id == CardKey.id)
                           .where(Voucher.batch_id == batch.id).order_by(CardKey.id)).all()
    return batch, [(vault.decrypt_card_key(k.product_id, k.fingerprint, k.nonce, k.ciphertext, k.key_version)
                    .decode("ascii"), v) for k, v in rows]


def audit_export(session: Session, batch: VoucherBatch, *, reason, actor: str, fmt: str,
                 source_ip: str | None = None) -> None:
    """The export's audit entry, before any code leaves (the caller commits it, then writes)."""
    reason = " ".join(str(reason or "").split())
    if not REASON[0] <= len(reason) <= REASON[1]:
        raise InvalidRequest("reason: say why the codes are exported (%(low)s to %(high)s characters)",
                             low=REASON[0], high=REASON[1])
    record(session, "voucher.export", actor=actor, target=f"voucher_batch:{batch.id}", source_ip=source_ip,
           details={"product_id": batch.product_id, "count": batch.count, "format": fmt, "reason": reason})


HEADER = ("code", "product", "kind", "uses", "value", "currency", "valid_from", "valid_until", "status")


def export_rows(product: Product, terms: VoucherTerms, rows: list[tuple[str, Voucher]]):
    yield HEADER
    for code, v in rows:
        yield (code, product.name, terms.kind, v.uses_left if terms.kind == "uses" else "",
               f"{v.value_left_cents // 100}.{v.value_left_cents % 100:02d}" if terms.kind == "value" else "",
               terms.currency, v.valid_from.isoformat(sep=" ") if v.valid_from else "",
               v.valid_until.isoformat(sep=" ") if v.valid_until else "", v.status)


def _cell(value):
    # A spreadsheet never runs a cell as a formula (a product's name could start with =).
    return spreadsheet_cell(value) if isinstance(value, str) else value


def render_csv(rows) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    for row in rows:
        writer.writerow([_cell(c) for c in row])
    return ("\ufeff" + out.getvalue()).encode("utf-8")   # the BOM: Excel reads the Chinese names right


def render_xlsx(rows) -> bytes:
    from openpyxl import Workbook   # imported only by an export that asks for a workbook
    book = Workbook(write_only=True)
    sheet = book.create_sheet("codes")
    for row in rows:
        sheet.append([_cell(c) for c in row])
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def write_private(path: Path, data: bytes) -> None:
    """The file, mode 0600, complete or not at all."""
    path = Path(path).absolute()
    if path.is_dir() or not path.parent.is_dir():
        raise InvalidRequest("output: %(path)s is not a file in an existing directory", path=path)
    fd, tmp = tempfile.mkstemp(prefix=".kamengd-vouchers-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def void_batch(session: Session, *, batch_id, reason, actor: str, source_ip: str | None = None,
               now: dt.datetime | None = None) -> int:
    """Withdraw a batch (the company's order was cancelled): its codes not used up are redeemed
    no more. Audited; returns how many codes were stopped."""
    now = now or utcnow()
    reason = " ".join(str(reason or "").split())
    if not REASON[0] <= len(reason) <= REASON[1]:
        raise InvalidRequest("reason: say why the batch is withdrawn (%(low)s to %(high)s characters)",
                             low=REASON[0], high=REASON[1])
    batch = session.get(VoucherBatch, batch_id) if isinstance(batch_id, int) and 0 < batch_id < 2**31 else None
    if batch is None:
        raise NotFound("batch %(batch_id)s not found", batch_id=batch_id)
    if session.execute(sa.update(VoucherBatch).where(VoucherBatch.id == batch.id, VoucherBatch.voided_at.is_(None))
                       .values(voided_at=now).execution_options(synchronize_session=False)).rowcount != 1:
        raise Conflict("batch %(batch_id)s was withdrawn already", batch_id=batch.id)
    stopped = session.execute(sa.update(Voucher).where(Voucher.batch_id == batch.id, Voucher.status == "active")
                              .values(status="void").execution_options(synchronize_session=False)).rowcount
    record(session, "voucher.batch_void", actor=actor, target=f"voucher_batch:{batch.id}", source_ip=source_ip,
           details={"product_id": batch.product_id, "reason": reason, "codes_stopped": stopped})
    return stopped


def refill(session: Session, vault: Vault, now: dt.datetime | None = None) -> dict[int, int]:
    """The job: each voucher product with keep_in_stock gets codes up to that many unsold ones;
    one whose validity window has ended is taken off sale (its codes would be born expired)."""
    now = now or utcnow()
    ended = session.scalars(sa.select(Product).join(VoucherTerms, VoucherTerms.product_id == Product.id)
                            .where(Product.is_active.is_(True), VoucherTerms.valid_until.is_not(None),
                                   VoucherTerms.valid_until <= now)).all()
    for product in ended:
        product.is_active = False
        record(session, "voucher.window_ended", actor="scheduler", target=f"product:{product.id}",
               details={"valid_until": session.get(VoucherTerms, product.id).valid_until.isoformat()})
    if ended:
        session.commit()
    made = {}
    wanted = session.execute(sa.select(VoucherTerms.product_id, VoucherTerms.keep_in_stock)
                             .join(Product, Product.id == VoucherTerms.product_id)
                             .where(VoucherTerms.keep_in_stock > 0, Product.is_active.is_(True))).all()
    for product_id, keep in wanted:
        have = session.scalar(sa.select(sa.func.count()).select_from(CardKey).where(
            CardKey.product_id == product_id, CardKey.status == "available"))
        if have < keep:
            made[product_id] = generate_stock(session, vault, product_id=product_id, count=keep - have,
                                              actor="scheduler", now=now)
            session.commit()   # one product at a time: a failure leaves the others' codes
    return made


def code_counts(session: Session, product_ids: list[int]) -> dict[int, dict[str, int]]:
    """Each voucher product's codes by status (stock = unsold), for the panel."""
    if not product_ids:
        return {}
    found: dict[int, dict[str, int]] = {}
    for product_id, status, n in session.execute(
            sa.select(Voucher.product_id, Voucher.status, sa.func.count())
            .where(Voucher.product_id.in_(product_ids)).group_by(Voucher.product_id, Voucher.status)):
        found.setdefault(product_id, {})[status] = n
    return found
