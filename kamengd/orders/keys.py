"""Which keys an order was delivered, and the key a loop-key product (循环卡密) delivers now."""
from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..inventory.models import CardKey

_k = CardKey.__table__


def loop_key_id(session: Session, product_id: int) -> int | None:
    """The key a loop-key product delivers now: its oldest available one (staff replace it by
    voiding it and importing another; the orders delivered before keep theirs)."""
    return session.scalar(sa.select(_k.c.id).where(_k.c.product_id == product_id, _k.c.status == "available")
                          .order_by(_k.c.id).limit(1))


def keys_query(order) -> sa.Select:
    """The encrypted keys an order was delivered: those sold to it, or its loop key."""
    query = sa.select(_k.c.product_id, _k.c.fingerprint, _k.c.nonce, _k.c.ciphertext, _k.c.key_version)
    if getattr(order, "loop_key_id", None) is not None:
        return query.where(_k.c.id == order.loop_key_id)
    return query.where(_k.c.order_id == order.id, _k.c.status == "sold").order_by(_k.c.id)
