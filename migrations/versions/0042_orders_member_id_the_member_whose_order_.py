"""orders.member_id: the member whose order it is (signed in when placing it, or who paid it
from a balance or with points), for its points.

Revision ID: 0042
Revises: 0041
Create Date: 2026-12-06 20:00:54.264938

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0042'
down_revision: Union[str, Sequence[str], None] = '0041'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    # ALTER TABLE, no copy of the orders table (nullable, no foreign key).
    op.add_column('orders', sa.Column('member_id', sa.Integer(), nullable=True))
    op.create_index('ix_orders_member_created', 'orders', ['member_id', 'created_at'], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index('ix_orders_member_created', table_name='orders')
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_column('member_id')
