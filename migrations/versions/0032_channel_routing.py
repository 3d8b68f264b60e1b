"""channel routing: amounts, daily caps, weights, fees and health per channel, channels per product

Revision ID: 0032
Revises: 0031
Create Date: 2026-12-06 02:48:00.313075

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

# revision identifiers, used by Alembic.
revision: str = '0032'
down_revision: Union[str, Sequence[str], None] = '0031'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('channel_days',
    sa.Column('channel_id', sa.Integer(), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('amount_cents', sa.BigInteger(), nullable=False),
    sa.Column('orders', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['channel_id'], ['payment_channels.id'], name=op.f('fk_channel_days_channel_id_payment_channels')),
    sa.PrimaryKeyConstraint('channel_id', 'day', name=op.f('pk_channel_days')),
    mysql_charset='utf8mb4',
    mysql_collate='utf8mb4_bin',
    mysql_engine='InnoDB'
    )
    op.create_table('product_channels',
    sa.Column('product_id', sa.Integer(), nullable=False),
    sa.Column('channel_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['channel_id'], ['payment_channels.id'], name=op.f('fk_product_channels_channel_id_payment_channels')),
    sa.ForeignKeyConstraint(['product_id'], ['products.id'], name=op.f('fk_product_channels_product_id_products')),
    sa.PrimaryKeyConstraint('product_id', 'channel_id', name=op.f('pk_product_channels')),
    mysql_charset='utf8mb4',
    mysql_collate='utf8mb4_bin',
    mysql_engine='InnoDB'
    )
    with op.batch_alter_table('product_channels', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_product_channels_channel_id'), ['channel_id'], unique=False)

    with op.batch_alter_table('payment_channels', schema=None) as batch_op:
        batch_op.add_column(sa.Column('min_amount_cents', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('max_amount_cents', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('daily_cap_cents', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('weight', sa.Integer(), server_default='1', nullable=False))
        batch_op.add_column(sa.Column('fee_bp', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('fee_fixed_cents', sa.BigInteger(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('health', sa.String(length=8), server_default='ok', nullable=False))
        batch_op.add_column(sa.Column('health_error', sa.String(length=300), nullable=True))
        batch_op.add_column(sa.Column('health_checked_at', sa.DateTime().with_variant(mysql.DATETIME(fsp=6), 'mariadb').with_variant(mysql.DATETIME(fsp=6), 'mysql'), nullable=True))
        batch_op.create_check_constraint(op.f('ck_payment_channels_health'), "health IN ('ok', 'down')")
        batch_op.create_check_constraint(
            op.f('ck_payment_channels_routing'),
            "weight >= 0 AND fee_bp >= 0 AND fee_bp <= 10000 AND fee_fixed_cents >= 0")

    with op.batch_alter_table('payments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('fee_cents', sa.BigInteger(), server_default='0', nullable=False))



def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('payments', schema=None) as batch_op:
        batch_op.drop_column('fee_cents')

    with op.batch_alter_table('payment_channels', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_payment_channels_routing'), type_='check')
        batch_op.drop_constraint(op.f('ck_payment_channels_health'), type_='check')
        batch_op.drop_column('health_checked_at')
        batch_op.drop_column('health_error')
        batch_op.drop_column('health')
        batch_op.drop_column('fee_fixed_cents')
        batch_op.drop_column('fee_bp')
        batch_op.drop_column('weight')
        batch_op.drop_column('daily_cap_cents')
        batch_op.drop_column('max_amount_cents')
        batch_op.drop_column('min_amount_cents')

    # The tables go with their indexes (MariaDB will not drop an index a foreign key uses).
    op.drop_table('product_channels')
    op.drop_table('channel_days')
