"""The daily settlement: the gateway's view of each order of a day against ours, for every
channel with a query API (Epay, and each gateway protocol of kamengd.payments.gateways).

A day is a calendar day in `site.timezone`. Its orders are those of such
channels paid that day, and those created that day and never paid. For each,
the gateway is asked (Epay: `api.php?act=order`, as reconciliation does; a
gateway protocol: its `look`, about the payment created for the order, which
moves no money) and every disagreement is recorded in the day's report:

- paid_at_gateway_only: the gateway says paid, we have no payment;
- amount_differs: both say paid, the amounts differ;
- missing_at_gateway: we recorded a payment, the gateway has no paid order;
- unverified: the gateway could not be asked (recorded so that no order is
  silently left out).

Each mismatch is also a `reconcile.mismatch` event. The report is filled in
chunks, from the order after `last_order_id`; a chunk is recorded with a
conditional update of that column, so two runners never record it twice and
an interrupted run goes on where it stopped. The job settles yesterday from
02:00 local time (late callbacks and reconciliation have had their hour).
"""
from __future__ import annotations

import datetime as dt
import logging
import zoneinfo
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..database import utcnow
from ..errors import KamengdError
from ..money import format_cents, parse_gateway_money
from ..notifications.events import emit
from ..orders.models import Order
from ..vault import Vault, VaultError
from .gateways import SPECS, gateway
from .gateways.base import GatewayError as ProtocolError
from .models import Payment, PaymentAttempt, PaymentChannel, SettlementEntry, SettlementReport
from .reconcile import GatewayError, query_epay_order
from .services import channel_option, channel_secrets, gateway_channel

log = logging.getLogger("kamengd.settlement")
KINDS = ("paid_at_gateway_only", "amount_differs", "missing_at_gateway", "unverified")
SETTLE_AFTER = dt.timedelta(hours=2)    # local time after midnight when yesterday is settled
RETRY_BASE = dt.timedelta(minutes=1)    # the gateway did not answer: wait 1, 2, 4 ... minutes
JOB_GIVE_UP_AFTER = 6                   # then record the order as unverified and go on (about an hour)


class GatewayDown(KamengdError):
    pass


def day_bounds(day: dt.date, tz: str) -> tuple[dt.datetime, dt.datetime]:
    """The day's start and end as naive UTC, the way times are stored."""
    zone = zoneinfo.ZoneInfo(tz)
    start = dt.datetime.combine(day, dt.time(), zone)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), zone)
    return tuple(t.astimezone(dt.UTC).replace(tzinfo=None) for t in (start, end))


def day_to_settle(now: dt.datetime, tz: str) -> dt.date:
    """The last day whose settlement may start at `now` (naive UTC)."""
    local = now.replace(tzinfo=dt.UTC).astimezone(zoneinfo.ZoneInfo(tz))
    return (local - SETTLE_AFTER).date() - dt.timedelta(days=1)


def open_report(session: Session, day: dt.date, tz: str, *, restart: bool = False,
                now: dt.datetime | None = None) -> SettlementReport:
    """The day's report, created if missing; `restart` clears it to run again."""
    now = now or utcnow()
    report = session.scalar(sa.select(SettlementReport).where(SettlementReport.day == day))
    if report is None:
        try:
            with session.begin_nested():
                report = SettlementReport(day=day, timezone=tz, status="running", last_order_id=0, checked=0,
                                          mismatches=0, unverified=0, failures=0, started_at=now)
                session.add(report)
        except IntegrityError:  # another runner created it first
            report = session.scalar(sa.select(SettlementReport).where(SettlementReport.day == day))
    elif restart:
        session.execute(sa.delete(SettlementEntry).where(SettlementEntry.report_id == report.id))
        report.timezone, report.status, report.last_order_id, report.started_at = tz, "running", 0, now
        report.checked = report.mismatches = report.unverified = report.failures = 0
        report.finished_at = report.next_attempt_at = None
    session.commit()   # the report exists before its first chunk asks a gateway
    return report


# The channel types whose gateway can be asked about an order.
SETTLED_TYPES = ("epay", *SPECS)


@dataclass
class _Row:
    order_id: int
    order_no: str
    channel_id: int
    status: str
    amount_cents: int
    currency: str
    channel_type: str
    ref: str | None                 # the payment created at a gateway protocol for the order (its query's key)
    paid_cents: int | None = None   # our recorded payment, None when we have none
    entry: dict | None = None


def _orders(session: Session, report: SettlementReport, limit: int) -> list[_Row]:
    start, end = day_bounds(report.day, report.timezone)
    latest = (sa.select(PaymentAttempt.gateway_ref).where(PaymentAttempt.order_id == Order.id,
                                                          PaymentAttempt.channel_id == Order.channel_id,
                                                          PaymentAttempt.status == "open")
              .order_by(PaymentAttempt.id.desc()).limit(1).correlate(Order).scalar_subquery())
    rows = session.execute(
        sa.select(Order.id, Order.order_no, Order.channel_id, Order.status, Order.amount_cents, Order.currency,
                  PaymentChannel.type, latest)
        .join(PaymentChannel, PaymentChannel.id == Order.channel_id)
        .where(PaymentChannel.type.in_(SETTLED_TYPES), Order.id > report.last_order_id,
               sa.or_(sa.and_(Order.paid_at >= start, Order.paid_at < end),
                      sa.and_(Order.paid_at.is_(None), Order.created_at >= start, Order.created_at < end)))
        .order_by(Order.id).limit(limit)).all()
    found = [_Row(*r) for r in rows]
    if found:
        paid = dict(session.execute(
            sa.select(Payment.order_id, Payment.amount_cents)
            .where(Payment.order_id.in_([r.order_id for r in found]), Payment.status.in_(("received", "held")))
            .order_by(Payment.id)).all())
        for r in found:
            r.paid_cents = paid.get(r.order_id)
    return found


def compare_notice(row: _Row, notice) -> dict | None:
    """The mismatch between our order and a gateway protocol's answer (a paid Notice, or None:
    no payment there), if any."""
    if notice is not None and notice.order_no != row.order_no:
        raise GatewayError("gateway answered about another order")
    paid = notice is not None and notice.paid
    if paid and notice.amount_cents is None:
        raise GatewayError("gateway reported a payment without a usable amount")
    other_currency = paid and bool(notice.currency) and notice.currency != row.currency
    entry = {"gateway_status": "paid" if paid else "unpaid", "gateway_amount_cents": notice.amount_cents if paid
             else None}
    if paid and row.paid_cents is None:
        return {**entry, "kind": "paid_at_gateway_only",
                "detail": f"the gateway has a payment of {format_cents(notice.amount_cents)} {notice.currency} "
                          f"(trade {notice.trade_no[:64]}); the order is {row.status} here"}
    if paid and (notice.amount_cents != row.paid_cents or other_currency):
        return {**entry, "kind": "amount_differs",
                "detail": f"gateway {format_cents(notice.amount_cents)} {notice.currency}, recorded here "
                          f"{format_cents(row.paid_cents)} {row.currency}"}
    if not paid and row.paid_cents is not None:
        return {**entry, "kind": "missing_at_gateway",
                "detail": f"a payment of {format_cents(row.paid_cents)} is recorded here; "
                          f"the gateway has no payment for the order"}
    return None


def compare(row: _Row, data: dict) -> dict | None:
    """The mismatch between our order and the Epay gateway's answer, if any."""
    gateway_paid = str(data.get("code")) == "1" and str(data.get("status")) == "1"
    gateway_amount = None
    if gateway_paid:
        gateway_amount = parse_gateway_money(data.get("money"))
        if gateway_amount is None:
            raise GatewayError("gateway reported a payment without a usable amount")
        if str(data.get("out_trade_no", row.order_no)) != row.order_no:
            raise GatewayError("gateway answered about another order")
    gateway_status = "paid" if gateway_paid else ("unpaid" if str(data.get("code")) == "1" else "no record")
    entry = {"gateway_status": gateway_status, "gateway_amount_cents": gateway_amount}
    if gateway_paid and row.paid_cents is None:
        return {**entry, "kind": "paid_at_gateway_only",
                "detail": f"the gateway has a payment of {format_cents(gateway_amount)} (trade "
                          f"{str(data.get('trade_no', ''))[:64]}); the order is {row.status} here"}
    if gateway_paid and gateway_amount != row.paid_cents:
        return {**entry, "kind": "amount_differs",
                "detail": f"gateway {format_cents(gateway_amount)}, recorded here {format_cents(row.paid_cents)}"}
    if not gateway_paid and row.paid_cents is not None:
        return {**entry, "kind": "missing_at_gateway",
                "detail": f"a payment of {format_cents(row.paid_cents)} is recorded here; "
                          f"the gateway says {gateway_status}"}
    return None


@dataclass
class ChunkResult:
    outcome: str            # done | more | waiting (the gateway did not answer; try the same order later)
    error: str | None = None


def settle_chunk(session: Session, vault: Vault, report: SettlementReport, *, query=query_epay_order,
                 chunk: int = 200, give_up_after: int = JOB_GIVE_UP_AFTER,
                 now: dt.datetime | None = None) -> ChunkResult:
    """Check the next orders of the report. When the gateway does not answer
    about an order, the report waits and asks about it again; after
    `give_up_after` failures in a row the order is recorded as unverified."""
    now = now or utcnow()
    if report.status != "running":
        return ChunkResult("done")
    start_id, failures = report.last_order_id, report.failures
    rows = _orders(session, report, chunk)
    gateways = {}
    for channel_id, channel_type in {(r.channel_id, r.channel_type) for r in rows}:
        channel = session.get(PaymentChannel, channel_id)
        try:
            gateways[channel_id] = (gateway_channel(vault, channel) if channel_type in SPECS else
                                    (channel_option(channel, "gateway"), channel_option(channel, "pid"),
                                     channel_secrets(vault, channel).get("key", "")))
        except VaultError:   # that channel's orders are unverified; the others are still settled
            gateways[channel_id] = None
    session.commit()  # ends the read: no transaction (SQLite write lock) is held while gateways answer
    done, result = [], ChunkResult("more" if rows else "done")
    for row in rows:
        if gateways[row.channel_id] is None:
            row.entry = {"kind": "unverified", "gateway_status": "error", "gateway_amount_cents": None,
                         "detail": "the channel's secret cannot be decrypted with the data key: enter it again"}
            done.append(row)
            continue
        try:
            row.entry = _ask(row, gateways[row.channel_id], query, now)
            failures = 0
        except (GatewayError, ProtocolError) as exc:
            failures += 1
            result.error = f"order {row.order_no}: {exc}"
            if failures < give_up_after:
                log.warning("settlement %s: %s; asking again later", report.day, result.error)
                result.outcome = "waiting"
                break
            row.entry = {"kind": "unverified", "gateway_status": "error", "gateway_amount_cents": None,
                         "detail": str(exc)[:500]}
            failures = 0
        done.append(row)
    result.outcome = _record(session, report, start_id, done, failures, result.outcome, now)
    return result


def _ask(row: _Row, conf, query, now: dt.datetime) -> dict | None:
    """The row's mismatch, from its gateway's answer. An order refunded here agrees with either
    answer (the gateway may still call it paid, as Stripe's session does, or closed since, as
    Alipay does): it is not asked about."""
    if row.status == "refunded":
        return None
    if row.channel_type == "epay":
        return compare(row, query(*conf, row.order_no))
    if row.ref is None:   # no payment was ever created there: the gateway has nothing to say
        return compare_notice(row, None)
    try:
        notice = gateway(row.channel_type).look(conf, row.order_no, row.ref, now)
    except ProtocolError:
        raise
    except Exception as exc:   # an answer no protocol foresaw: as if the gateway had not answered
        raise GatewayError(f"unexpected answer ({exc.__class__.__name__})") from None
    return compare_notice(row, notice)


def _record(session: Session, report: SettlementReport, start_id: int, done: list[_Row], failures: int,
            outcome: str, now: dt.datetime) -> str:
    t = SettlementReport.__table__
    entries = [r for r in done if r.entry]
    mismatches = [r for r in entries if r.entry["kind"] != "unverified"]
    values = {"last_order_id": done[-1].order_id if done else start_id, "failures": failures,
              "checked": t.c.checked + len(done), "mismatches": t.c.mismatches + len(mismatches),
              "unverified": t.c.unverified + len(entries) - len(mismatches),
              "next_attempt_at": now + RETRY_BASE * 2 ** max(failures - 1, 0) if outcome == "waiting" else None}
    if outcome == "done":
        values.update(status="complete", finished_at=now)
    claimed = session.execute(t.update().where(t.c.id == report.id, t.c.last_order_id == start_id,
                                               t.c.status == "running").values(**values)).rowcount
    if not claimed:  # someone else recorded this chunk (or restarted the report)
        session.rollback()
        return "more"
    for r in entries:
        session.add(SettlementEntry(report_id=report.id, order_id=r.order_id, order_no=r.order_no, kind=r.entry["kind"],
                                    our_status=r.status, our_amount_cents=r.paid_cents, created_at=now,
                                    gateway_status=r.entry["gateway_status"],
                                    gateway_amount_cents=r.entry["gateway_amount_cents"], detail=r.entry["detail"]))
    for r in mismatches:
        emit(session, "reconcile.mismatch",
             {"day": report.day.isoformat(), "order_no": r.order_no, "kind": r.entry["kind"],
              "our_status": r.status, "detail": r.entry["detail"],
              "our_amount": format_cents(r.paid_cents) if r.paid_cents is not None else None,
              "gateway_amount": format_cents(r.entry["gateway_amount_cents"])
              if r.entry["gateway_amount_cents"] is not None else None}, now)
    session.commit()   # a chunk at a time: the report goes on from here next run
    session.refresh(report)
    return outcome


def run_settlement(session: Session, vault: Vault, day: dt.date, tz: str, *, query=query_epay_order,
                   restart: bool = False) -> SettlementReport:
    """Settle a day now, to the end (`kamengd reconcile run`). If the gateway
    does not answer about the same order twice in a row, stop: the report
    stays open and the scheduler goes on with it later."""
    report = open_report(session, day, tz, restart=restart)
    while True:
        result = settle_chunk(session, vault, report, query=query, chunk=50)
        if result.outcome == "done":
            return report
        if result.outcome == "waiting" and report.failures >= 2:
            raise GatewayDown(f"the gateway does not answer ({result.error}); the report for {day} is incomplete "
                              f"({report.checked} orders checked) and the scheduler goes on with it later")


def settle_payments(session: Session, vault: Vault, tz: str, *, now: dt.datetime | None = None,
                    query=query_epay_order) -> dict:
    """The job: settle the last finished day, one chunk per run."""
    now = now or utcnow()
    day = day_to_settle(now, tz)
    report = open_report(session, day, tz, now=now)
    if report.status != "running" or (report.next_attempt_at and report.next_attempt_at > now):
        return {"day": day.isoformat(), "status": report.status}
    outcome = settle_chunk(session, vault, report, query=query, now=now).outcome
    return {"day": day.isoformat(), "status": report.status, "outcome": outcome, "checked": report.checked,
            "mismatches": report.mismatches, "unverified": report.unverified}


def report_entries(session: Session, report: SettlementReport) -> list[SettlementEntry]:
    return session.scalars(sa.select(SettlementEntry).where(SettlementEntry.report_id == report.id)
                           .order_by(SettlementEntry.id)).all()
