"""orders.points_used, points_discount_cents, points_held: points taken off an order at checkout

Revision ID: 0045
Revises: 0044
Create Date: 2026-12-07 00:17:48.766705

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0045'
down_revision: Union[str, Sequence[str], None] = '0044'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    # op.add_column, not the batch: ALTER TABLE ADD COLUMN with a constant default, no copy of
    # the orders table (SQLite and MariaDB).
    op.add_column('orders', sa.Column('points_used', sa.BigInteger(), server_default=sa.text('0'), nullable=False))
    op.add_column('orders', sa.Column('points_discount_cents', sa.BigInteger(), server_default=sa.text('0'),
                                      nullable=False))
    op.add_column('orders', sa.Column('points_held', sa.Boolean(), server_default=sa.text('0'), nullable=False))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_column('points_held')
        batch_op.drop_column('points_discount_cents')
        batch_op.drop_column('points_used')
