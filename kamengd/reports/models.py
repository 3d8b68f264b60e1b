"""Summary rows the reports read: one row per closed day of the shop's calendar and key.

A day's rows are what happened that day: orders created, paid, delivered and refunded,
each counted on the day it happened (not on the day the order was created), so a closed
day never changes once summarised — the `summarise_sales` job writes each day once, the
day after (kamengd.reports.summary). Days not yet summarised (today) are computed from
the orders by the same function when a report is read.
"""
from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.dialects.mysql import MEDIUMBLOB
from sqlalchemy.orm import Mapped, mapped_column

from ..database import FixedBinary, UTCDateTime, utcnow
from ..extensions import db

_money = {"default": 0, "server_default": sa.text("0")}


class SalesDay(db.Model):
    """Orders of one product through one channel in one currency, on one day (channel 0: none)."""
    __tablename__ = "report_sales_days"

    day: Mapped[dt.date] = mapped_column(sa.Date, primary_key=True)
    product_id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    channel_id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    currency: Mapped[str] = mapped_column(sa.String(3), primary_key=True)
    created: Mapped[int] = mapped_column(sa.Integer, **_money)
    paid: Mapped[int] = mapped_column(sa.Integer, **_money)
    revenue_cents: Mapped[int] = mapped_column(sa.BigInteger, **_money)       # what buyers paid
    discount_cents: Mapped[int] = mapped_column(sa.BigInteger, **_money)      # coupons and points took off
    fee_cents: Mapped[int] = mapped_column(sa.BigInteger, **_money)           # what the channel kept
    delivered: Mapped[int] = mapped_column(sa.Integer, **_money)
    cost_cents: Mapped[int] = mapped_column(sa.BigInteger, **_money)          # of what was delivered
    uncosted: Mapped[int] = mapped_column(sa.Integer, **_money)               # delivered without a cost price
    refunded: Mapped[int] = mapped_column(sa.Integer, **_money)
    refund_cents: Mapped[int] = mapped_column(sa.BigInteger, **_money)
    commission_cents: Mapped[int] = mapped_column(sa.BigInteger, **_money)    # booked less reversed


class SalesHour(db.Model):
    """Paid orders by the hour of the shop's day (the heatmap)."""
    __tablename__ = "report_sales_hours"

    day: Mapped[dt.date] = mapped_column(sa.Date, primary_key=True)
    hour: Mapped[int] = mapped_column(sa.SmallInteger, primary_key=True, autoincrement=False)
    currency: Mapped[str] = mapped_column(sa.String(3), primary_key=True)
    paid: Mapped[int] = mapped_column(sa.Integer, **_money)
    revenue_cents: Mapped[int] = mapped_column(sa.BigInteger, **_money)


class AgentDay(db.Model):
    """An agent's sales (its own orders and its sub-station's) and the commission it earned."""
    __tablename__ = "report_agent_days"

    day: Mapped[dt.date] = mapped_column(sa.Date, primary_key=True)
    agent_id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    currency: Mapped[str] = mapped_column(sa.String(3), primary_key=True)
    paid: Mapped[int] = mapped_column(sa.Integer, **_money)
    revenue_cents: Mapped[int] = mapped_column(sa.BigInteger, **_money)
    commission_cents: Mapped[int] = mapped_column(sa.BigInteger, **_money)


class CouponDay(db.Model):
    """Paid orders that used a coupon, and what it took off."""
    __tablename__ = "report_coupon_days"

    day: Mapped[dt.date] = mapped_column(sa.Date, primary_key=True)
    coupon_id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    currency: Mapped[str] = mapped_column(sa.String(3), primary_key=True)
    paid: Mapped[int] = mapped_column(sa.Integer, **_money)
    discount_cents: Mapped[int] = mapped_column(sa.BigInteger, **_money)
    revenue_cents: Mapped[int] = mapped_column(sa.BigInteger, **_money)
    refunded: Mapped[int] = mapped_column(sa.Integer, **_money)


class RiskDay(db.Model):
    """Risk rules' decisions by rule and outcome."""
    __tablename__ = "report_risk_days"

    day: Mapped[dt.date] = mapped_column(sa.Date, primary_key=True)
    rule_name: Mapped[str] = mapped_column(sa.String(100), primary_key=True)
    outcome: Mapped[str] = mapped_column(sa.String(8), primary_key=True)
    decisions: Mapped[int] = mapped_column(sa.Integer, **_money)


class ReportBuyer(db.Model):
    """A buyer (a hash of the case-folded e-mail) and the days it paid: repurchase and cohorts."""
    __tablename__ = "report_buyers"

    buyer_key: Mapped[bytes] = mapped_column(FixedBinary(32), primary_key=True)
    first_day: Mapped[dt.date] = mapped_column(sa.Date, index=True)
    last_day: Mapped[dt.date] = mapped_column(sa.Date)
    days: Mapped[int] = mapped_column(sa.Integer)       # distinct days it paid on
    orders: Mapped[int] = mapped_column(sa.Integer)


class RepeatGap(db.Model):
    """Buyers who paid again on `day`, `gap_days` after the day they last paid."""
    __tablename__ = "report_repeat_gaps"

    day: Mapped[dt.date] = mapped_column(sa.Date, primary_key=True)
    gap_days: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    buyers: Mapped[int] = mapped_column(sa.Integer)


class CohortMonth(db.Model):
    """Of the buyers who first paid in month `cohort`, how many paid in month `month`."""
    __tablename__ = "report_cohorts"

    cohort: Mapped[dt.date] = mapped_column(sa.Date, primary_key=True)   # the first of the month
    month: Mapped[dt.date] = mapped_column(sa.Date, primary_key=True)
    buyers: Mapped[int] = mapped_column(sa.Integer)


class ReportProgress(db.Model):
    """How far the summaries go, and in which time zone their days are (one row, id 1)."""
    __tablename__ = "report_progress"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    timezone: Mapped[str] = mapped_column(sa.String(64))
    through: Mapped[dt.date | None] = mapped_column(sa.Date)    # the last day summarised
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


EXPORT_STATUSES = ("queued", "running", "done", "failed")


class ReportExport(db.Model):
    """A list (orders, ledger, redemptions) written to a file for a staff member in the background,
    its progress, and the file itself in parts (any server can hand it out). Kept a day."""
    __tablename__ = "report_exports"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(16))
    format: Mapped[str] = mapped_column(sa.String(4))
    first_day: Mapped[dt.date] = mapped_column(sa.Date)
    last_day: Mapped[dt.date] = mapped_column(sa.Date)
    status: Mapped[str] = mapped_column(sa.String(8), default="queued")
    rows_expected: Mapped[int] = mapped_column(sa.Integer, default=0)
    rows_done: Mapped[int] = mapped_column(sa.Integer, default=0)
    size_bytes: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    error: Mapped[str | None] = mapped_column(sa.String(200))
    requested_by: Mapped[str] = mapped_column(sa.String(128))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    # Written by the worker as it goes: a run whose worker died stops moving, and is shown failed.
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        sa.CheckConstraint("status IN (" + ", ".join(f"'{s}'" for s in EXPORT_STATUSES) + ")",
                           name="export_status_known"),
    )


class ReportExportPart(db.Model):
    """One piece (at most 1 MiB) of an export's file, in order."""
    __tablename__ = "report_export_parts"

    export_id: Mapped[int] = mapped_column(sa.ForeignKey("report_exports.id"), primary_key=True)
    seq: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    data: Mapped[bytes] = mapped_column(sa.LargeBinary().with_variant(MEDIUMBLOB(), "mysql", "mariadb"))
