"""report summaries and exports, orders refunded_at

Revision ID: 0048
Revises: 0047
Create Date: 2026-12-07 12:09:24.159666

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

# revision identifiers, used by Alembic.
revision: str = '0048'
down_revision: Union[str, Sequence[str], None] = '0047'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('report_agent_days',
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('agent_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('paid', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('revenue_cents', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('commission_cents', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.PrimaryKeyConstraint('day', 'agent_id', 'currency', name=op.f('pk_report_agent_days')),
    mysql_charset='utf8mb4',
    mysql_collate='utf8mb4_bin',
    mysql_engine='InnoDB'
    )
    op.create_table('report_buyers',
    sa.Column('buyer_key', sa.LargeBinary().with_variant(sa.BINARY(length=32), 'mariadb').with_variant(sa.BINARY(length=32), 'mysql'), nullable=False),
    sa.Column('first_day', sa.Date(), nullable=False),
    sa.Column('last_day', sa.Date(), nullable=False),
    sa.Column('days', sa.Integer(), nullable=False),
    sa.Column('orders', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('buyer_key', name=op.f('pk_report_buyers')),
    mysql_charset='utf8mb4',
    mysql_collate='utf8mb4_bin',
    mysql_engine='InnoDB'
    )
    op.create_index(op.f('ix_report_buyers_first_day'), 'report_buyers', ['first_day'], unique=False)

    op.create_table('report_cohorts',
    sa.Column('cohort', sa.Date(), nullable=False),
    sa.Column('month', sa.Date(), nullable=False),
    sa.Column('buyers', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('cohort', 'month', name=op.f('pk_report_cohorts')),
    mysql_charset='utf8mb4',
    mysql_collate='utf8mb4_bin',
    mysql_engine='InnoDB'
    )
    op.create_table('report_coupon_days',
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('coupon_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('paid', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('discount_cents', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('revenue_cents', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('refunded', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.PrimaryKeyConstraint('day', 'coupon_id', 'currency', name=op.f('pk_report_coupon_days')),
    mysql_charset='utf8mb4',
    mysql_collate='utf8mb4_bin',
    mysql_engine='InnoDB'
    )
    op.create_table('report_progress',
    sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('timezone', sa.String(length=64), nullable=False),
    sa.Column('through', sa.Date(), nullable=True),
    sa.Column('updated_at', sa.DateTime().with_variant(mysql.DATETIME(fsp=6), 'mariadb').with_variant(mysql.DATETIME(fsp=6), 'mysql'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_report_progress')),
    mysql_charset='utf8mb4',
    mysql_collate='utf8mb4_bin',
    mysql_engine='InnoDB'
    )
    op.create_table('report_repeat_gaps',
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('gap_days', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('buyers', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('day', 'gap_days', name=op.f('pk_report_repeat_gaps')),
    mysql_charset='utf8mb4',
    mysql_collate='utf8mb4_bin',
    mysql_engine='InnoDB'
    )
    op.create_table('report_risk_days',
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('rule_name', sa.String(length=100), nullable=False),
    sa.Column('outcome', sa.String(length=8), nullable=False),
    sa.Column('decisions', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.PrimaryKeyConstraint('day', 'rule_name', 'outcome', name=op.f('pk_report_risk_days')),
    mysql_charset='utf8mb4',
    mysql_collate='utf8mb4_bin',
    mysql_engine='InnoDB'
    )
    op.create_table('report_sales_days',
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('product_id', sa.Integer(), nullable=False),
    sa.Column('channel_id', sa.Integer(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('created', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('paid', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('revenue_cents', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('discount_cents', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('fee_cents', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('delivered', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('cost_cents', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('uncosted', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('refunded', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('refund_cents', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('commission_cents', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.PrimaryKeyConstraint('day', 'product_id', 'channel_id', 'currency', name=op.f('pk_report_sales_days')),
    mysql_charset='utf8mb4',
    mysql_collate='utf8mb4_bin',
    mysql_engine='InnoDB'
    )
    op.create_table('report_sales_hours',
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('hour', sa.SmallInteger(), autoincrement=False, nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('paid', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('revenue_cents', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.PrimaryKeyConstraint('day', 'hour', 'currency', name=op.f('pk_report_sales_hours')),
    mysql_charset='utf8mb4',
    mysql_collate='utf8mb4_bin',
    mysql_engine='InnoDB'
    )
    op.create_table('report_exports',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('format', sa.String(length=4), nullable=False),
    sa.Column('first_day', sa.Date(), nullable=False),
    sa.Column('last_day', sa.Date(), nullable=False),
    sa.Column('status', sa.String(length=8), nullable=False),
    sa.Column('rows_expected', sa.Integer(), nullable=False),
    sa.Column('rows_done', sa.Integer(), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('error', sa.String(length=200), nullable=True),
    sa.Column('requested_by', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime().with_variant(mysql.DATETIME(fsp=6), 'mariadb').with_variant(mysql.DATETIME(fsp=6), 'mysql'), nullable=False),
    sa.Column('heartbeat_at', sa.DateTime().with_variant(mysql.DATETIME(fsp=6), 'mariadb').with_variant(mysql.DATETIME(fsp=6), 'mysql'), nullable=True),
    sa.Column('finished_at', sa.DateTime().with_variant(mysql.DATETIME(fsp=6), 'mariadb').with_variant(mysql.DATETIME(fsp=6), 'mysql'), nullable=True),
    sa.CheckConstraint("status IN ('queued', 'running', 'done', 'failed')", name=op.f('ck_report_exports_export_status_known')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_report_exports')),
    mysql_charset='utf8mb4',
    mysql_collate='utf8mb4_bin',
    mysql_engine='InnoDB'
    )
    op.create_index(op.f('ix_report_exports_created_at'), 'report_exports', ['created_at'], unique=False)
    op.create_table('report_export_parts',
    sa.Column('export_id', sa.Integer(), nullable=False),
    sa.Column('seq', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('data', sa.LargeBinary().with_variant(mysql.MEDIUMBLOB(), 'mariadb').with_variant(mysql.MEDIUMBLOB(), 'mysql'), nullable=False),
    sa.ForeignKeyConstraint(['export_id'], ['report_exports.id'], name=op.f('fk_report_export_parts_export_id_report_exports')),
    sa.PrimaryKeyConstraint('export_id', 'seq', name=op.f('pk_report_export_parts')),
    mysql_charset='utf8mb4',
    mysql_collate='utf8mb4_bin',
    mysql_engine='InnoDB'
    )
    # Plain ADD COLUMN (no table copy on SQLite; instant on MariaDB, even at a million orders).
    op.add_column('orders', sa.Column('refunded_at', sa.DateTime().with_variant(mysql.DATETIME(fsp=6), 'mariadb').with_variant(mysql.DATETIME(fsp=6), 'mysql'), nullable=True))
    # Orders refunded before this column: their last change was the refund.
    op.execute("UPDATE orders SET refunded_at = updated_at WHERE status = 'refunded'")
    op.create_index('ix_orders_delivered_at', 'orders', ['delivered_at'], unique=False)
    op.create_index('ix_orders_refunded_at', 'orders', ['refunded_at'], unique=False)


def downgrade() -> None:
    """Downgrade schema (each table's indexes go with it)."""
    op.drop_index('ix_orders_refunded_at', table_name='orders')
    op.drop_index('ix_orders_delivered_at', table_name='orders')
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_column('refunded_at')

    op.drop_table('report_export_parts')
    op.drop_table('report_exports')
    op.drop_table('report_sales_hours')
    op.drop_table('report_sales_days')
    op.drop_table('report_risk_days')
    op.drop_table('report_repeat_gaps')
    op.drop_table('report_progress')
    op.drop_table('report_coupon_days')
    op.drop_table('report_cohorts')
    op.drop_table('report_buyers')
    op.drop_table('report_agent_days')
