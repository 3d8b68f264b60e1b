"""The staff panel at /admin: server-rendered pages, one guard for every route."""
# Each module adds its routes (helpers: its template functions) to the blueprint when imported.
from . import (account, agents, audit, catalog, channels, coupons, dashboard, helpers, ops, orders,  # noqa: F401
               reports, risk, settings, staff, stock, suppliers, terminal, tickets,
               vouchers)
from .blueprint import bp

__all__ = ["bp"]
