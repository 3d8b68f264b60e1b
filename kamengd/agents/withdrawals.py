"""Withdrawals: an agent asks to be paid out, finance pays or rejects.

A request holds its amount at once (available -> held, in the request's
transaction, under the lock of the agent's spendable account): two requests at
the same moment can never both spend one balance, and the daily limit is
counted under the same lock. Paying moves the held amount out to the shop's
payouts (less the fee, which the shop keeps); rejecting gives it back. Each
step changes the row's status conditionally (requested -> paid or rejected,
once) together with its ledger movement, and is audited.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import re
from decimal import ROUND_HALF_UP, Decimal
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..audit.services import record
from ..context import get_config
from ..database import utcnow
from ..errors import Collector, Conflict, InvalidRequest, NotFound
from ..ledger import services as ledger
from ..ledger.models import LedgerAccount
from ..money import format_cents, parse_plain_money
from ..notifications.events import emit
from ..settings.services import get_setting
from ..validation import has_control_characters, is_email_address
from .models import Agent, PayoutAccount, Withdrawal

PAYOUT_KINDS = ("alipay", "bank", "usdt_trc20", "usdt_erc20")
MAX_PAYOUT_ACCOUNTS = 5
_PHONE_RE = re.compile(r"1[3-9][0-9]{9}")
_CARD_RE = re.compile(r"[0-9]{12,19}")
_ERC20_RE = re.compile(r"0x[0-9a-fA-F]{40}")
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_REFERENCE_RE = re.compile(r"[\x21-\x7e][\x20-\x7e]{0,127}")
_IDEMPOTENCY_RE = re.compile(r"[\x21-\x7e]{1,64}")
STATUSES = ("requested", "paid", "rejected")
_acc = LedgerAccount.__table__


def _tron_address(text: str) -> bool:
    """A TRON (TRC-20) address: base58check of 0x41 and 20 bytes."""
    if len(text) != 34 or not text.startswith("T") or any(c not in _B58 for c in text):
        return False
    number = 0
    for c in text:
        number = number * 58 + _B58.index(c)
    raw = number.to_bytes(25, "big") if number < 1 << 200 else b""
    if len(raw) != 25 or raw[0] != 0x41:
        return False
    return hashlib.sha256(hashlib.sha256(raw[:21]).digest()).digest()[:4] == raw[21:]


def _one_line(value, field: str, errors: Collector, *, longest: int, required: bool = True) -> str:
    text = value.strip() if isinstance(value, str) else ""
    if not isinstance(value, str) and value is not None:
        errors.add(InvalidRequest("%(field)s: text is required", field=field))
    elif required and not text:
        errors.add(InvalidRequest("%(field)s is required", field=field))
    elif len(text) > longest or has_control_characters(text):
        errors.add(InvalidRequest("%(field)s: at most %(longest)s characters on one line", field=field,
                                  longest=longest))
    return text


def check_payout_account(kind, account, holder, bank="") -> tuple[str, str, str, str]:
    """(kind, account, holder, bank) checked for the kind of account; every mistake at once."""
    errors = Collector()
    if kind not in PAYOUT_KINDS:
        errors.add(InvalidRequest("kind: one of %(kinds)s", kinds=", ".join(PAYOUT_KINDS)))
    account = _one_line(account, "account", errors, longest=128)
    holder = _one_line(holder, "holder", errors, longest=64)
    bank = _one_line(bank, "bank", errors, longest=64, required=kind == "bank")
    if account and kind == "alipay" and not (_PHONE_RE.fullmatch(account) or is_email_address(account)):
        errors.add(InvalidRequest("account: an Alipay account is a mobile number (11 digits) or an e-mail "
                                  "address"))
    elif account and kind == "bank":
        account = account.replace(" ", "")
        if not _CARD_RE.fullmatch(account):
            errors.add(InvalidRequest("account: a bank card number is 12 to 19 digits"))
    elif account and kind == "usdt_trc20" and not _tron_address(account):
        errors.add(InvalidRequest("account: not a TRC-20 address (34 characters from T, with a valid checksum)"))
    elif account and kind == "usdt_erc20" and not _ERC20_RE.fullmatch(account):
        errors.add(InvalidRequest("account: not an ERC-20 address (0x and 40 hex digits)"))
    errors.check()
    return kind, account, holder, bank


def add_payout_account(session: Session, agent: Agent, *, kind, account, holder, bank="", actor: str,
                       source_ip: str | None = None) -> PayoutAccount:
    kind, account, holder, bank = check_payout_account(kind, account, holder, bank)
    kept = session.scalar(sa.select(sa.func.count()).select_from(PayoutAccount).where(
        PayoutAccount.agent_id == agent.id, PayoutAccount.removed_at.is_(None)))
    if kept >= MAX_PAYOUT_ACCOUNTS:
        raise Conflict("at most %(count)s payout accounts: remove one first", count=MAX_PAYOUT_ACCOUNTS)
    row = PayoutAccount(agent_id=agent.id, kind=kind, account=account, holder=holder, bank=bank)
    session.add(row)
    session.flush()
    record(session, "payout_account.add", actor=actor, target=f"agent:{agent.id}", source_ip=source_ip,
           details={"id": row.id, "kind": kind, "account": mask_account(account)})
    return row


def mask_account(account: str) -> str:
    """For the audit log and lists: enough to recognise it, not to copy it."""
    return account if len(account) <= 8 else f"{account[:4]}…{account[-4:]}"


def payout_accounts(session: Session, agent_id: int) -> list[PayoutAccount]:
    return session.scalars(sa.select(PayoutAccount).where(PayoutAccount.agent_id == agent_id,
                                                          PayoutAccount.removed_at.is_(None))
                           .order_by(PayoutAccount.id)).all()


def remove_payout_account(session: Session, agent: Agent, account_id, *, actor: str,
                          source_ip: str | None = None) -> None:
    row = _own_account(session, agent.id, account_id)
    row.removed_at = utcnow()
    record(session, "payout_account.remove", actor=actor, target=f"agent:{agent.id}", source_ip=source_ip,
           details={"id": row.id, "kind": row.kind, "account": mask_account(row.account)})


def _own_account(session: Session, agent_id: int, account_id) -> PayoutAccount:
    """The agent's own, kept account; another agent's, or none, is NotFound alike."""
    if isinstance(account_id, bool) or not isinstance(account_id, int) or not 0 < account_id < 2**31:
        raise NotFound("payout account not found")
    row = session.get(PayoutAccount, account_id)
    if row is None or row.agent_id != agent_id or row.removed_at is not None:
        raise NotFound("payout account not found")
    return row


def fee_for(session: Session, amount_cents: int) -> int:
    """The shop's fee on a withdrawal: the percentage (half up to the cent) plus the fixed part."""
    percent = Decimal(get_setting(session, "withdrawals.fee_percent") or "0")
    fixed = parse_plain_money(get_setting(session, "withdrawals.fee_fixed") or "0", allow_zero=True)
    share = (Decimal(amount_cents) * percent / 100).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    return int(share) + fixed


def shop_day(now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The start and the end of `now`'s day in the shop's time zone, as naive UTC."""
    zone = ZoneInfo(get_config().site.timezone)
    day = now.replace(tzinfo=dt.timezone.utc).astimezone(zone).date()
    start, end = (dt.datetime.combine(d, dt.time(), zone).astimezone(dt.timezone.utc).replace(tzinfo=None)
                  for d in (day, day + dt.timedelta(days=1)))
    return start, end


def request_withdrawal(session: Session, agent: Agent, *, payout_account_id, amount, actor: str,
                       source_ip: str | None = None, now: dt.datetime | None = None,
                       idempotency_key: str | None = None) -> Withdrawal:
    """Hold `amount` (a plain decimal string) from the agent's balance for a payout.
    Refused with nothing held: below the minimum, over the daily limit, a fee that would
    leave nothing, more than the balance, another agent's account. With an
    `idempotency_key` seen before: that withdrawal (`replayed` set), or Conflict if it
    asked for something else."""
    now = now or utcnow()
    if idempotency_key is not None and not (isinstance(idempotency_key, str) and
                                            _IDEMPOTENCY_RE.fullmatch(idempotency_key)):
        raise InvalidRequest("Idempotency-Key: 1 to 64 printable characters")
    cents = parse_plain_money(amount, field="amount")
    if agent.kind == "member":   # a member's balance is for buying, not for paying out
        raise InvalidRequest("%(username)s is a plain member: withdrawals are for agents", username=agent.username)
    target = _own_account(session, agent.id, payout_account_id)
    minimum = parse_plain_money(get_setting(session, "withdrawals.minimum") or "0", allow_zero=True)
    if cents < minimum:
        raise InvalidRequest("amount: the smallest withdrawal is %(minimum)s", minimum=format_cents(minimum))
    fee = fee_for(session, cents)
    if fee >= cents:
        raise InvalidRequest("amount: the fee of %(fee)s leaves nothing to pay out", fee=format_cents(fee))
    accounts = ledger.agent_refs(session, agent.id)
    # The agent's spendable account, locked: its requests one at a time (the limit below is theirs).
    session.execute(sa.select(_acc.c.id).where(_acc.c.id == accounts["available"].id).with_for_update())
    if idempotency_key is not None:   # under the lock: a retry sent at once waits, then finds the first
        earlier = session.scalar(sa.select(Withdrawal).where(Withdrawal.agent_id == agent.id,
                                                             Withdrawal.idempotency_key == idempotency_key))
        if earlier is not None:
            if (earlier.payout_account_id, earlier.amount_cents) != (target.id, cents):
                raise Conflict("this Idempotency-Key was used for another withdrawal")
            earlier.replayed = True
            return earlier
    limit = parse_plain_money(get_setting(session, "withdrawals.daily_limit") or "0", allow_zero=True)
    if limit:
        start, end = shop_day(now)
        today = int(session.scalar(sa.select(sa.func.coalesce(sa.func.sum(Withdrawal.amount_cents), 0)).where(
            Withdrawal.agent_id == agent.id, Withdrawal.status != "rejected",
            Withdrawal.requested_at >= start, Withdrawal.requested_at < end)))
        if today + cents > limit:
            raise InvalidRequest("amount: withdrawals are limited to %(limit)s a day; %(left)s is left today",
                                 limit=format_cents(limit), left=format_cents(max(limit - today, 0)))
    with session.begin_nested():   # the row and its hold, or neither
        row = Withdrawal(agent_id=agent.id, payout_account_id=target.id, amount_cents=cents, fee_cents=fee,
                         currency=accounts["available"].currency, status="requested", requested_at=now,
                         idempotency_key=idempotency_key)
        session.add(row)
        session.flush()
        ledger.post(session, cause=f"withdrawal:{row.id}:request", kind="withdrawal",
                    legs=[(accounts["available"], -cents), (accounts["held"], cents)], actor=actor,
                    memo=f"withdrawal {row.id} requested", savepoint=False)
    record(session, "withdrawal.request", actor=actor, target=f"withdrawal:{row.id}", source_ip=source_ip,
           details={"agent": agent.username, "amount": format_cents(cents), "fee": format_cents(fee),
                    "to": f"{target.kind} {mask_account(target.account)}"})
    emit(session, "withdrawal.requested", {"withdrawal_id": row.id, "agent": agent.username,
                                           "amount": format_cents(cents), "fee": format_cents(fee),
                                           "currency": row.currency,
                                           "to": f"{target.kind} {mask_account(target.account)}"}, now)
    return row


def _review(session: Session, withdrawal_id, status: str, now: dt.datetime, **values) -> Withdrawal:
    if isinstance(withdrawal_id, bool) or not isinstance(withdrawal_id, int) or not 0 < withdrawal_id < 2**31:
        raise NotFound("withdrawal not found")
    t = Withdrawal.__table__
    done = session.execute(t.update().where(t.c.id == withdrawal_id, t.c.status == "requested")
                           .values(status=status, reviewed_at=now, **values)).rowcount
    row = session.scalar(sa.select(Withdrawal).where(Withdrawal.id == withdrawal_id)
                         .execution_options(populate_existing=True))
    if row is None:
        raise NotFound("withdrawal not found")
    if not done:
        raise Conflict("withdrawal %(id)s is %(status)s already", id=withdrawal_id, status=row.status)
    return row


def pay_withdrawal(session: Session, withdrawal_id, *, reference, actor: str, source_ip: str | None = None,
                   now: dt.datetime | None = None) -> Withdrawal:
    """Finance paid it out (outside kamengd) under `reference`: the held amount leaves."""
    reference = reference.strip() if isinstance(reference, str) else ""
    if not _REFERENCE_RE.fullmatch(reference):
        raise InvalidRequest("reference: the payment's reference (1 to 128 printable characters) is required")
    now = now or utcnow()
    row = _review(session, withdrawal_id, "paid", now, reviewed_by=actor[:80], reference=reference)
    held = ledger.agent_refs(session, row.agent_id)["held"]
    legs = [(held, -row.amount_cents), (ledger.shop_ref(session, "shop:payouts", row.currency),
                                        row.amount_cents - row.fee_cents)]
    if row.fee_cents:
        legs.append((ledger.shop_ref(session, "shop:fees", row.currency), row.fee_cents))
    ledger.post(session, cause=f"withdrawal:{row.id}:paid", kind="withdrawal_paid", legs=legs, actor=actor,
                memo=f"withdrawal {row.id} paid: {reference}"[:200])
    record(session, "withdrawal.pay", actor=actor, target=f"withdrawal:{row.id}", source_ip=source_ip,
           details={"amount": format_cents(row.amount_cents), "fee": format_cents(row.fee_cents),
                    "paid": format_cents(row.amount_cents - row.fee_cents), "reference": reference})
    return row


def reject_withdrawal(session: Session, withdrawal_id, *, reason, actor: str, source_ip: str | None = None,
                      now: dt.datetime | None = None) -> Withdrawal:
    """Not paid: the held amount goes back to the agent's balance."""
    reason = reason.strip() if isinstance(reason, str) else ""
    if not reason or len(reason) > 200 or has_control_characters(reason):
        raise InvalidRequest("reason: 1 to 200 characters on one line are required")
    now = now or utcnow()
    row = _review(session, withdrawal_id, "rejected", now, reviewed_by=actor[:80], reason=reason)
    accounts = ledger.agent_refs(session, row.agent_id)
    ledger.post(session, cause=f"withdrawal:{row.id}:rejected", kind="withdrawal_rejected",
                legs=[(accounts["held"], -row.amount_cents), (accounts["available"], row.amount_cents)],
                actor=actor, memo=f"withdrawal {row.id} rejected")
    record(session, "withdrawal.reject", actor=actor, target=f"withdrawal:{row.id}", source_ip=source_ip,
           details={"amount": format_cents(row.amount_cents), "reason": reason})
    return row


def list_withdrawals(session: Session, *, status: str | None = None, agent_id: int | None = None,
                     limit: int = 200) -> list[Withdrawal]:
    query = sa.select(Withdrawal).order_by(Withdrawal.id.desc()).limit(limit)
    if status is not None:
        if status not in STATUSES:
            raise InvalidRequest("status: one of %(statuses)s", statuses=", ".join(STATUSES))
        query = query.where(Withdrawal.status == status)
    if agent_id is not None:
        query = query.where(Withdrawal.agent_id == agent_id)
    return session.scalars(query).all()


def withdrawal_view(row: Withdrawal, account: PayoutAccount | None = None) -> dict:
    data = {"id": row.id, "amount": format_cents(row.amount_cents), "fee": format_cents(row.fee_cents),
            "payout": format_cents(row.amount_cents - row.fee_cents), "currency": row.currency,
            "status": row.status, "requested_at": row.requested_at.isoformat(timespec="seconds") + "Z",
            "reviewed_at": row.reviewed_at.isoformat(timespec="seconds") + "Z" if row.reviewed_at else None,
            "reference": row.reference, "reason": row.reason, "payout_account_id": row.payout_account_id}
    if account is not None:
        data["to"] = {"kind": account.kind, "account": mask_account(account.account), "holder": account.holder}
    return data
