"""Read-only figures for staff: sales, orders, stock, attention, jobs, settlement, notifications.

Plain functions of a session; those that depend on the day take `now`
(naive UTC) and the shop's time zone, so tests move the clock by hand.
Nothing here writes. Money is integer cents, summed per currency.
"""
from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.orm import Session

from .catalog.models import Product
from .inventory.models import CardKey
from .notifications.models import Event, Notification, NotificationAttempt
from .orders.models import ORDER_STATUSES, Order
from .payments.models import SettlementEntry, SettlementReport
from .payments.settlement import KINDS, day_bounds
from .scheduler.lease import leader_info
from .scheduler.models import JobRun

# A sale: paid the right amount (held orders wait for staff; refunded ones were given back).
SALE_STATUSES = ("paid", "delivered")


def local_date(now: dt.datetime, tz: str) -> dt.date:
    """The shop's calendar day at `now` (naive UTC)."""
    return now.replace(tzinfo=dt.UTC).astimezone(zoneinfo.ZoneInfo(tz)).date()


# --- sales and orders ---------------------------------------------------------------------------

@dataclass
class DaySales:
    day: dt.date
    orders: int = 0
    amounts: dict[str, int] = field(default_factory=dict)   # currency -> cents


def sales_between(session: Session, start: dt.datetime, end: dt.datetime) -> tuple[int, dict[str, int]]:
    """Orders paid in [start, end) (naive UTC) that are sales: their count and sum per currency."""
    rows = session.execute(
        sa.select(Order.currency, sa.func.count(), sa.func.coalesce(sa.func.sum(Order.amount_cents), 0))
        .where(Order.paid_at >= start, Order.paid_at < end, Order.status.in_(SALE_STATUSES))
        .group_by(Order.currency).order_by(Order.currency)).all()
    return sum(n for _, n, _ in rows), {currency: int(cents) for currency, _, cents in rows}


def daily_sales(session: Session, now: dt.datetime, tz: str, days: int = 7) -> list[DaySales]:
    """Today (in `tz`) and the days before it, newest first; a day is a calendar day of the shop."""
    today = local_date(now, tz)
    result = []
    for back in range(days):
        day = today - dt.timedelta(days=back)
        count, amounts = sales_between(session, *day_bounds(day, tz))
        result.append(DaySales(day, count, amounts))
    return result


def orders_by_status(session: Session) -> dict[str, int]:
    """Every order status (in the model's order) with its count, zeros included."""
    counts = dict(session.execute(sa.select(Order.status, sa.func.count()).group_by(Order.status)).all())
    return {status: counts.get(status, 0) for status in ORDER_STATUSES}


@dataclass
class LowStock:
    product_id: int
    name: str
    available: int
    threshold: int


def low_stock_products(session: Session, limit: int = 50) -> list[LowStock]:
    """Products below their low-stock threshold, the same rule as the stock.low warning
    (kamengd.inventory.warnings): active, auto delivery, threshold > 0, available < threshold.
    Emptiest first."""
    products = session.execute(sa.select(Product.id, Product.name, Product.low_stock_threshold)
                               .where(Product.is_active.is_(True), Product.delivery_mode == "auto",
                                      Product.low_stock_threshold > 0)).all()
    if not products:
        return []
    t = CardKey.__table__
    available = dict(session.execute(
        sa.select(t.c.product_id, sa.func.count()).where(t.c.status == "available",
                                                         t.c.product_id.in_([p.id for p in products]))
        .group_by(t.c.product_id)).all())
    low = [LowStock(p.id, p.name, available.get(p.id, 0), p.low_stock_threshold) for p in products
           if available.get(p.id, 0) < p.low_stock_threshold]
    low.sort(key=lambda s: (s.available, s.name, s.product_id))
    return low[:limit]


def _needs_attention():
    return sa.or_(Order.status == "held", Order.flagged_at.is_not(None))


def orders_needing_attention(session: Session, limit: int = 10) -> tuple[int, list[Order]]:
    """Held and flagged orders: how many, and the `limit` waiting longest."""
    count = session.scalar(sa.select(sa.func.count()).select_from(Order).where(_needs_attention()))
    orders = session.scalars(sa.select(Order).where(_needs_attention())
                             .order_by(sa.func.coalesce(Order.flagged_at, Order.updated_at), Order.id)
                             .limit(limit)).all()
    return count, list(orders)


# --- the scheduler and its jobs -----------------------------------------------------------------

@dataclass
class SchedulerStatus:
    owner: str | None
    heartbeat_at: dt.datetime | None
    acquired_at: dt.datetime | None
    age_seconds: float | None
    stale: bool      # no leader, or its heartbeat is older than two lease periods


def scheduler_status(session: Session, now: dt.datetime, lease_seconds: int) -> SchedulerStatus:
    info = leader_info(session)
    age = round((now - info.heartbeat_at).total_seconds(), 1) if info.heartbeat_at else None
    stale = info.owner is None or age is None or age > 2 * lease_seconds
    return SchedulerStatus(info.owner, info.heartbeat_at, info.acquired_at, age, stale)


def last_runs(session: Session, jobs) -> dict[str, JobRun | None]:
    """The newest recorded run of each named job (one index lookup per job)."""
    return {name: session.scalars(sa.select(JobRun).where(JobRun.job == name)
                                  .order_by(JobRun.started_at.desc(), JobRun.id.desc()).limit(1)).first()
            for name in jobs}


def job_runs(session: Session, *, job: str | None = None, limit: int = 20, offset: int = 0) -> list[JobRun]:
    """Recorded runs, newest first."""
    query = sa.select(JobRun).order_by(JobRun.id.desc()).limit(limit)
    if offset:
        query = query.offset(offset)
    if job:
        query = query.where(JobRun.job == job)
    return list(session.scalars(query))


def run_seconds(run: JobRun) -> float | None:
    return round((run.finished_at - run.started_at).total_seconds(), 3) if run.finished_at else None


# --- the daily settlement -----------------------------------------------------------------------

@dataclass
class ReportSummary:
    report: SettlementReport
    kinds: dict[str, int]      # entry kind -> count, every kind of KINDS


def settlement_reports(session: Session, *, limit: int = 50, offset: int = 0) -> list[ReportSummary]:
    """Settlement reports, newest day first, with their entries counted by kind."""
    reports = session.scalars(sa.select(SettlementReport).order_by(SettlementReport.day.desc())
                              .limit(limit).offset(offset)).all()
    counts: dict[int, dict[str, int]] = {r.id: dict.fromkeys(KINDS, 0) for r in reports}
    if reports:
        rows = session.execute(sa.select(SettlementEntry.report_id, SettlementEntry.kind, sa.func.count())
                               .where(SettlementEntry.report_id.in_(list(counts)))
                               .group_by(SettlementEntry.report_id, SettlementEntry.kind)).all()
        for report_id, kind, n in rows:
            counts[report_id][kind] = n
    return [ReportSummary(r, counts[r.id]) for r in reports]


def settlement_report(session: Session, day: dt.date) -> SettlementReport | None:
    return session.scalar(sa.select(SettlementReport).where(SettlementReport.day == day))


# --- notifications ------------------------------------------------------------------------------

NOTIFICATION_STATUSES = ("pending", "sent", "failed")


def recent_notifications(session: Session, *, status: str | None = None, limit: int = 20,
                         offset: int = 0) -> list[tuple[Notification, str]]:
    """Notifications newest first, each with its event's type."""
    query = (sa.select(Notification, Event.type).join(Event, Event.id == Notification.event_id)
             .order_by(Notification.id.desc()).limit(limit))
    if offset:
        query = query.offset(offset)
    if status:
        query = query.where(Notification.status == status)
    return [(n, event_type) for n, event_type in session.execute(query)]


def notification_attempts(session: Session, notification_ids) -> dict[int, list[NotificationAttempt]]:
    """Every attempt of these notifications, oldest first, by notification id."""
    attempts: dict[int, list[NotificationAttempt]] = {}
    ids = list(notification_ids)
    if ids:
        for a in session.scalars(sa.select(NotificationAttempt).where(NotificationAttempt.notification_id.in_(ids))
                                 .order_by(NotificationAttempt.id)):
            attempts.setdefault(a.notification_id, []).append(a)
    return attempts


@dataclass
class EventRow:
    event: Event
    notifications: list[Notification]


def recent_events(session: Session, *, status: str | None = None, limit: int = 50,
                  offset: int = 0) -> list[EventRow]:
    """Events newest first with their notifications; with `status`, only events that have a
    notification in that status, and only those notifications."""
    query = sa.select(Event).order_by(Event.id.desc()).limit(limit).offset(offset)
    if status:
        query = query.where(sa.exists(sa.select(Notification.id).where(Notification.event_id == Event.id,
                                                                       Notification.status == status)))
    events = session.scalars(query).all()
    notes: dict[int, list[Notification]] = {e.id: [] for e in events}
    if events:
        nq = sa.select(Notification).where(Notification.event_id.in_(list(notes))).order_by(Notification.id)
        if status:
            nq = nq.where(Notification.status == status)
        for n in session.scalars(nq):
            notes[n.event_id].append(n)
    return [EventRow(e, notes[e.id]) for e in events]
