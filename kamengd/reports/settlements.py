"""The daily settlement reports, for staff: each day with its entries counted by kind. Nothing here writes."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..payments.models import SettlementEntry, SettlementReport
from ..payments.settlement import KINDS


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
