"""Risk rules (风控) and the decisions they made.

A rule looks at an order as it is placed (the buyer's address, e-mail, device cookie and
amount), or at a payment as it arrives, and asks for an action: allow (and stop there),
require a captcha, hold the order for review, or refuse it. Every match is a decision row
with the rule and what it saw (kamengd.risk.engine).
"""
from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from ..database import BigId, UTCDateTime, utcnow
from ..extensions import db

# What each kind of rule looks at, and when.
ORDER_KINDS = ("ip_velocity", "email_velocity", "device_velocity", "ip_list", "email_list", "amount_anomaly")
PAYMENT_KINDS = ("repeat_payment",)
LOOKUP_KINDS = ("failed_lookups",)
RULE_KINDS = ORDER_KINDS + PAYMENT_KINDS + LOOKUP_KINDS
# Weakest first: when several rules match, the strongest action is taken (an `allow` match
# stops the evaluation before any other rule: a list of trusted addresses or buyers).
ACTIONS = ("allow", "captcha", "review", "refuse")


class RiskRule(db.Model):
    __tablename__ = "risk_rules"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100))
    kind: Mapped[str] = mapped_column(sa.String(24))
    # The kind's parameters as JSON (kamengd.risk.rules checks them).
    params: Mapped[str] = mapped_column(sa.Text)
    action: Mapped[str] = mapped_column(sa.String(8))
    is_active: Mapped[bool] = mapped_column(default=True)
    sort_order: Mapped[int] = mapped_column(default=0)
    created_by: Mapped[str] = mapped_column(sa.String(64), default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    __table_args__ = (
        sa.CheckConstraint("kind IN (" + ", ".join(f"'{k}'" for k in RULE_KINDS) + ")", name="kind_known"),
        sa.CheckConstraint("action IN (" + ", ".join(f"'{a}'" for a in ACTIONS) + ")", name="action_known"),
    )


class RiskDecision(db.Model):
    """One rule matching one order (or one refused attempt, which has no order)."""
    __tablename__ = "risk_decisions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    order_id: Mapped[int | None] = mapped_column(sa.BigInteger, index=True)
    stage: Mapped[str] = mapped_column(sa.String(8))          # order, payment
    rule_id: Mapped[int | None] = mapped_column(sa.Integer)   # (the rule may be deleted since)
    rule_name: Mapped[str] = mapped_column(sa.String(100))
    kind: Mapped[str] = mapped_column(sa.String(24))
    action: Mapped[str] = mapped_column(sa.String(8))
    # What the rule saw (JSON): the address, the e-mail's domain, counts, amounts; never a secret.
    inputs: Mapped[str] = mapped_column(sa.Text)
    # The action taken for the attempt (the strongest of its matches; "passed": a captcha solved).
    outcome: Mapped[str] = mapped_column(sa.String(8))
    client_ip: Mapped[str | None] = mapped_column(sa.String(45))
    product_id: Mapped[int | None] = mapped_column(sa.Integer)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class LookupFailure(db.Model):
    """A buyer's lookup that found nothing (a wrong token, number or password), by address:
    the failed_lookups rule counts them. Kept a day (a job forgets them)."""
    __tablename__ = "lookup_failures"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    client_ip: Mapped[str] = mapped_column(sa.String(45))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (sa.Index("ix_lookup_failures_ip_created", "client_ip", "created_at"),)


class CaptchaUse(db.Model):
    """A solved captcha, kept until it would have expired: each is good for one attempt."""
    __tablename__ = "captcha_uses"

    signature: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
