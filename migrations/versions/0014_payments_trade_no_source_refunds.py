"""payments: trade numbers up to 128 characters, source, refunded_at, status index

A callback and reconciliation now keep trade numbers under one rule of 128
characters (reconciliation cut them to 64, a callback over 64 was refused).
`source` tells a payment found by reconciliation from one reported by a
callback, so the later callback of the same payment fills in its trade
number instead of becoming a second payment; rows reconciliation wrote
before say so in `raw` and are marked here. `refunded_at` records when an
extra payment (a buyer charged twice) was given back; the status index
lets the panel list the extra payments still to refund.

SQLite rebuilds the table for the wider column (batch mode); MariaDB
widens it in place.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

revision: str = '0014'
down_revision: Union[str, Sequence[str], None] = '0013'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

_DATETIME = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), 'mariadb').with_variant(mysql.DATETIME(fsp=6), 'mysql')


def upgrade() -> None:
    with op.batch_alter_table('payments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('source', sa.String(length=16), server_default='callback', nullable=False))
        batch_op.add_column(sa.Column('refunded_at', _DATETIME, nullable=True))
        batch_op.alter_column('trade_no', existing_type=sa.VARCHAR(length=64), type_=sa.String(length=128),
                              existing_nullable=False)
        batch_op.create_index(batch_op.f('ix_payments_status'), ['status'], unique=False)
    payments = sa.table('payments', sa.column('source', sa.String), sa.column('raw', sa.Text))
    op.execute(payments.update().where(payments.c.raw.like('%"source": "reconciliation"%'))
               .values(source='reconciliation'))


def downgrade() -> None:
    with op.batch_alter_table('payments', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_payments_status'))
        batch_op.alter_column('trade_no', existing_type=sa.String(length=128), type_=sa.VARCHAR(length=64),
                              existing_nullable=False)
        batch_op.drop_column('refunded_at')
        batch_op.drop_column('source')
