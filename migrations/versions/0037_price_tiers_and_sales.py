"""prices: wholesale tiers (批发价) and a time-window price (限时价) per product; nullable
columns, so an ALTER TABLE.

Revision ID: 0037
Revises: 0036
Create Date: 2026-12-06 11:28:31.480875

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

# revision identifiers, used by Alembic.
revision: str = '0037'
down_revision: Union[str, Sequence[str], None] = '0036'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.add_column(sa.Column('price_tiers', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('sale_price_cents', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('sale_starts_at', sa.DateTime().with_variant(mysql.DATETIME(fsp=6), 'mariadb').with_variant(mysql.DATETIME(fsp=6), 'mysql'), nullable=True))
        batch_op.add_column(sa.Column('sale_ends_at', sa.DateTime().with_variant(mysql.DATETIME(fsp=6), 'mariadb').with_variant(mysql.DATETIME(fsp=6), 'mysql'), nullable=True))



def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.drop_column('sale_ends_at')
        batch_op.drop_column('sale_starts_at')
        batch_op.drop_column('sale_price_cents')
        batch_op.drop_column('price_tiers')

