"""products.input_fields, orders.buyer_input: what a buyer fills in for manual goods

A product may ask the buyer for a QQ number, a game account or a phone
(kamengd.catalog.inputs); the order keeps the values with their labels.
Two nullable columns added at the end: no table copy on SQLite, instant on
MariaDB.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

revision: str = '0015'
down_revision: Union[str, Sequence[str], None] = '0014'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.add_column('products', sa.Column('input_fields', sa.Text(), nullable=True))
    op.add_column('orders', sa.Column('buyer_input', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_column('buyer_input')
    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.drop_column('input_fields')
