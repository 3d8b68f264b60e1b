"""events and notifications, stock warnings, delivery retries and flags, daily settlement

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

DATETIME = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision: str = '0005'
down_revision: Union[str, Sequence[str], None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('events',
    sa.Column('id', BIGID, nullable=False),
    sa.Column('type', sa.String(length=32), nullable=False),
    sa.Column('payload', sa.Text(), nullable=False),
    sa.Column('created_at', DATETIME, nullable=False),
    sa.Column('dispatched', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_events')),
    mysql_charset='utf8mb4',
    mysql_collate='utf8mb4_bin',
    mysql_engine='InnoDB'
    )
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_events_created_at'), ['created_at'], unique=False)
        batch_op.create_index('ix_events_dispatched_id', ['dispatched', 'id'], unique=False)

    op.create_table('settlement_reports',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('timezone', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('last_order_id', sa.BigInteger(), nullable=False),
    sa.Column('checked', sa.Integer(), nullable=False),
    sa.Column('mismatches', sa.Integer(), nullable=False),
    sa.Column('unverified', sa.Integer(), nullable=False),
    sa.Column('failures', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', DATETIME, nullable=True),
    sa.Column('started_at', DATETIME, nullable=False),
    sa.Column('finished_at', DATETIME, nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_settlement_reports')),
    sa.UniqueConstraint('day', name=op.f('uq_settlement_reports_day')),
    mysql_charset='utf8mb4',
    mysql_collate='utf8mb4_bin',
    mysql_engine='InnoDB'
    )
    op.create_table('notifications',
    sa.Column('id', BIGID, nullable=False),
    sa.Column('event_id', BIGID, nullable=False),
    sa.Column('channel', sa.String(length=16), nullable=False),
    sa.Column('target', sa.String(length=500), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', DATETIME, nullable=False),
    sa.Column('last_error', sa.String(length=500), nullable=True),
    sa.Column('created_at', DATETIME, nullable=False),
    sa.Column('sent_at', DATETIME, nullable=True),
    sa.ForeignKeyConstraint(['event_id'], ['events.id'], name=op.f('fk_notifications_event_id_events')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_notifications')),
    mysql_charset='utf8mb4',
    mysql_collate='utf8mb4_bin',
    mysql_engine='InnoDB'
    )
    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.create_index('ix_notifications_event_id', ['event_id'], unique=False)
        batch_op.create_index('ix_notifications_status_next_attempt_at', ['status', 'next_attempt_at'], unique=False)

    op.create_table('notification_attempts',
    sa.Column('id', BIGID, nullable=False),
    sa.Column('notification_id', BIGID, nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('started_at', DATETIME, nullable=False),
    sa.Column('duration_ms', sa.Integer(), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=True),
    sa.Column('error', sa.String(length=500), nullable=True),
    sa.ForeignKeyConstraint(['notification_id'], ['notifications.id'], name=op.f('fk_notification_attempts_notification_id_notifications')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_notification_attempts')),
    mysql_charset='utf8mb4',
    mysql_collate='utf8mb4_bin',
    mysql_engine='InnoDB'
    )
    with op.batch_alter_table('notification_attempts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_notification_attempts_notification_id'), ['notification_id'], unique=False)

    op.create_table('settlement_entries',
    sa.Column('id', BIGID, nullable=False),
    sa.Column('report_id', sa.Integer(), nullable=False),
    sa.Column('order_id', BIGID, nullable=False),
    sa.Column('order_no', sa.String(length=32), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('our_status', sa.String(length=16), nullable=False),
    sa.Column('our_amount_cents', sa.BigInteger(), nullable=True),
    sa.Column('gateway_status', sa.String(length=32), nullable=False),
    sa.Column('gateway_amount_cents', sa.BigInteger(), nullable=True),
    sa.Column('detail', sa.String(length=500), nullable=False),
    sa.Column('created_at', DATETIME, nullable=False),
    sa.ForeignKeyConstraint(['order_id'], ['orders.id'], name=op.f('fk_settlement_entries_order_id_orders')),
    sa.ForeignKeyConstraint(['report_id'], ['settlement_reports.id'], name=op.f('fk_settlement_entries_report_id_settlement_reports')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_settlement_entries')),
    mysql_charset='utf8mb4',
    mysql_collate='utf8mb4_bin',
    mysql_engine='InnoDB'
    )
    with op.batch_alter_table('settlement_entries', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_settlement_entries_order_id'), ['order_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_settlement_entries_report_id'), ['report_id'], unique=False)

    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.add_column(sa.Column('delivery_attempts', sa.Integer(), server_default=sa.text('0'), nullable=False))
        batch_op.add_column(sa.Column('next_delivery_at', DATETIME, nullable=True))
        batch_op.add_column(sa.Column('flagged_at', DATETIME, nullable=True))
        batch_op.add_column(sa.Column('flag_reason', sa.String(length=200), nullable=True))
        batch_op.create_index('ix_orders_flagged_at', ['flagged_at'], unique=False)
        batch_op.create_index('ix_orders_paid_at', ['paid_at'], unique=False)

    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.add_column(sa.Column('low_stock_alerted', sa.Boolean(), server_default=sa.text('0'), nullable=False))



def downgrade() -> None:
    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.drop_column('low_stock_alerted')

    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_index('ix_orders_paid_at')
        batch_op.drop_index('ix_orders_flagged_at')
        batch_op.drop_column('flag_reason')
        batch_op.drop_column('flagged_at')
        batch_op.drop_column('next_delivery_at')
        batch_op.drop_column('delivery_attempts')

    for table in ('settlement_entries', 'notification_attempts', 'notifications', 'settlement_reports', 'events'):
        op.drop_table(table)
