"""order cap day: the day an order was counted against its channel's daily cap, so that its
room is given back exactly once (at expiry, or when the order moves to another channel).

Orders pending during the upgrade keep NULL: their room, if their channel had a cap, stays taken
until the day ends (nothing passes a cap; it may be reached a little early that day).

Revision ID: 0033
Revises: 0032
Create Date: 2026-12-06 07:29:55.838046

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0033'
down_revision: Union[str, Sequence[str], None] = '0032'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    # A nullable column: an ALTER TABLE on SQLite too, never a copy of the orders table.
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.add_column(sa.Column('cap_day', sa.Date(), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_column('cap_day')
