"""buyer daily limit: at most N units of a product to one buyer (e-mail, case-folded) a day,
counted per buyer and day (buyer_days); each order keeps the day it was counted on, to give
its units back once if it expires. Nullable columns: ALTER TABLE, no copy of orders.

Revision ID: 0036
Revises: 0035
Create Date: 2026-12-06 11:00:41.969417

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0036'
down_revision: Union[str, Sequence[str], None] = '0035'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('buyer_days',
    sa.Column('product_id', sa.Integer(), nullable=False),
    sa.Column('email_folded', sa.String(length=254), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('quantity', sa.Integer(), nullable=False),
    sa.CheckConstraint('quantity >= 0', name=op.f('ck_buyer_days_quantity_not_negative')),
    sa.ForeignKeyConstraint(['product_id'], ['products.id'], name=op.f('fk_buyer_days_product_id_products'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('product_id', 'email_folded', 'day', name=op.f('pk_buyer_days')),
    mysql_charset='utf8mb4',
    mysql_collate='utf8mb4_bin',
    mysql_engine='InnoDB'
    )
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.add_column(sa.Column('limit_day', sa.Date(), nullable=True))

    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.add_column(sa.Column('buyer_daily_limit', sa.Integer(), nullable=True))



def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.drop_column('buyer_daily_limit')

    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_column('limit_day')

    op.drop_table('buyer_days')
