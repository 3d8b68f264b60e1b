"""orders: an index for "a paid buyer waits for this product" (status, product, paid_at)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02

"""
from typing import Sequence, Union

from alembic import op

revision: str = '0012'
down_revision: Union[str, Sequence[str], None] = '0011'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_index('ix_orders_status_product_paid_at', 'orders', ['status', 'product_id', 'paid_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_orders_status_product_paid_at', table_name='orders')
