"""orders.pay_type: the Epay pay type (alipay, wxpay, …) the buyer chose

One Epay channel may offer several pay types (kamengd.payments.methods); the
order keeps the one it is paid with, so its pay URL says it again later.
NULL for older orders: their channel's single pay type, as before. A
nullable column added at the end: no table copy on SQLite, instant on
MariaDB.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-05

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

revision: str = '0016'
down_revision: Union[str, Sequence[str], None] = '0015'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.add_column('orders', sa.Column('pay_type', sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_column('pay_type')
