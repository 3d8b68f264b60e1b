"""The agent portal (代理后台): an agent signs in and runs its business from a phone or a desk.

The page modules add their routes to the blueprint; importing the package imports them all.
"""
from .blueprint import bp
from . import account, batches, pages, webhooks  # noqa: F401  (their routes)

__all__ = ["bp"]
