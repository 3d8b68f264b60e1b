"""coupons: codes with a fixed or percent discount, a scope, a minimum amount, a window and
usage limits (total, per buyer, first order only); each order keeps its coupon, its discount
and whether it still holds a use (given back once if it expires unpaid).

The three order columns are added by ALTER TABLE (SQLite too): the orders table is never copied.

Revision ID: 0034
Revises: 0033
Create Date: 2026-12-06 10:27:16.791630

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

# revision identifiers, used by Alembic.
revision: str = '0034'
down_revision: Union[str, Sequence[str], None] = '0033'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('coupons',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('code', sa.String(length=32), nullable=False),
    sa.Column('note', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('amount_off_cents', sa.BigInteger(), nullable=True),
    sa.Column('percent_off_bp', sa.Integer(), nullable=True),
    sa.Column('max_discount_cents', sa.BigInteger(), nullable=True),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('scope', sa.String(length=8), nullable=False),
    sa.Column('scope_id', sa.Integer(), nullable=True),
    sa.Column('min_amount_cents', sa.BigInteger(), nullable=False),
    sa.Column('starts_at', sa.DateTime().with_variant(mysql.DATETIME(fsp=6), 'mariadb').with_variant(mysql.DATETIME(fsp=6), 'mysql'), nullable=True),
    sa.Column('ends_at', sa.DateTime().with_variant(mysql.DATETIME(fsp=6), 'mariadb').with_variant(mysql.DATETIME(fsp=6), 'mysql'), nullable=True),
    sa.Column('max_uses', sa.Integer(), nullable=True),
    sa.Column('used', sa.Integer(), nullable=False),
    sa.Column('per_buyer', sa.Integer(), nullable=True),
    sa.Column('first_order', sa.Boolean(), nullable=False),
    sa.Column('is_active', sa.Boolean(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('created_by', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime().with_variant(mysql.DATETIME(fsp=6), 'mariadb').with_variant(mysql.DATETIME(fsp=6), 'mysql'), nullable=False),
    sa.Column('updated_at', sa.DateTime().with_variant(mysql.DATETIME(fsp=6), 'mariadb').with_variant(mysql.DATETIME(fsp=6), 'mysql'), nullable=False),
    sa.CheckConstraint("(kind = 'fixed' AND amount_off_cents > 0 AND percent_off_bp IS NULL) OR (kind = 'percent' AND percent_off_bp > 0 AND percent_off_bp <= 10000 AND amount_off_cents IS NULL)", name=op.f('ck_coupons_discount_shape')),
    sa.CheckConstraint("(scope = 'all') = (scope_id IS NULL)", name=op.f('ck_coupons_scope_target')),
    sa.CheckConstraint("kind IN ('fixed', 'percent')", name=op.f('ck_coupons_kind_known')),
    sa.CheckConstraint("scope IN ('all', 'category', 'product')", name=op.f('ck_coupons_scope_known')),
    sa.CheckConstraint('min_amount_cents >= 0', name=op.f('ck_coupons_min_amount_not_negative')),
    sa.CheckConstraint('used >= 0 AND (max_uses IS NULL OR used <= max_uses)', name=op.f('ck_coupons_uses_within_limit')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_coupons')),
    sa.UniqueConstraint('code', name=op.f('uq_coupons_code')),
    mysql_charset='utf8mb4',
    mysql_collate='utf8mb4_bin',
    mysql_engine='InnoDB'
    )
    op.create_table('coupon_buyers',
    sa.Column('coupon_id', sa.Integer(), nullable=False),
    sa.Column('email', sa.String(length=254), nullable=False),
    sa.Column('uses', sa.Integer(), nullable=False),
    sa.CheckConstraint('uses >= 0', name=op.f('ck_coupon_buyers_uses_not_negative')),
    sa.ForeignKeyConstraint(['coupon_id'], ['coupons.id'], name=op.f('fk_coupon_buyers_coupon_id_coupons'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('coupon_id', 'email', name=op.f('pk_coupon_buyers')),
    mysql_charset='utf8mb4',
    mysql_collate='utf8mb4_bin',
    mysql_engine='InnoDB'
    )
    # op.add_column, not the batch: Alembic's batch rebuilds a SQLite table for a column whose
    # default is an SQL expression; a plain ALTER TABLE … ADD COLUMN … DEFAULT 0 needs no copy.
    op.add_column('orders', sa.Column('coupon_id', sa.Integer(), nullable=True))
    op.add_column('orders', sa.Column('discount_cents', sa.BigInteger(), server_default=sa.text('0'), nullable=False))
    op.add_column('orders', sa.Column('coupon_held', sa.Boolean(), server_default=sa.text('0'), nullable=False))



def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_column('coupon_held')
        batch_op.drop_column('discount_cents')
        batch_op.drop_column('coupon_id')

    op.drop_table('coupon_buyers')
    op.drop_table('coupons')
