"""risk rules: the rules (风控), the decisions they made, the captchas solved; on orders the
device cookie's hash and whether a rule asked for review, with the indexes the rules' velocity
counts read (address, e-mail, device, each with the time).

Revision ID: 0035
Revises: 0034
Create Date: 2026-12-06 10:43:32.429979

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

# revision identifiers, used by Alembic.
revision: str = '0035'
down_revision: Union[str, Sequence[str], None] = '0034'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('captcha_uses',
    sa.Column('signature', sa.String(length=128), nullable=False),
    sa.Column('expires_at', sa.DateTime().with_variant(mysql.DATETIME(fsp=6), 'mariadb').with_variant(mysql.DATETIME(fsp=6), 'mysql'), nullable=False),
    sa.PrimaryKeyConstraint('signature', name=op.f('pk_captcha_uses')),
    mysql_charset='utf8mb4',
    mysql_collate='utf8mb4_bin',
    mysql_engine='InnoDB'
    )
    with op.batch_alter_table('captcha_uses', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_captcha_uses_expires_at'), ['expires_at'], unique=False)

    op.create_table('lookup_failures',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('client_ip', sa.String(length=45), nullable=False),
    sa.Column('created_at', sa.DateTime().with_variant(mysql.DATETIME(fsp=6), 'mariadb').with_variant(mysql.DATETIME(fsp=6), 'mysql'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_lookup_failures')),
    mysql_charset='utf8mb4',
    mysql_collate='utf8mb4_bin',
    mysql_engine='InnoDB'
    )
    with op.batch_alter_table('lookup_failures', schema=None) as batch_op:
        batch_op.create_index('ix_lookup_failures_ip_created', ['client_ip', 'created_at'], unique=False)

    op.create_table('risk_decisions',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('order_id', sa.BigInteger(), nullable=True),
    sa.Column('stage', sa.String(length=8), nullable=False),
    sa.Column('rule_id', sa.Integer(), nullable=True),
    sa.Column('rule_name', sa.String(length=100), nullable=False),
    sa.Column('kind', sa.String(length=24), nullable=False),
    sa.Column('action', sa.String(length=8), nullable=False),
    sa.Column('inputs', sa.Text(), nullable=False),
    sa.Column('outcome', sa.String(length=8), nullable=False),
    sa.Column('client_ip', sa.String(length=45), nullable=True),
    sa.Column('product_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime().with_variant(mysql.DATETIME(fsp=6), 'mariadb').with_variant(mysql.DATETIME(fsp=6), 'mysql'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_risk_decisions')),
    mysql_charset='utf8mb4',
    mysql_collate='utf8mb4_bin',
    mysql_engine='InnoDB'
    )
    with op.batch_alter_table('risk_decisions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_risk_decisions_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_risk_decisions_order_id'), ['order_id'], unique=False)

    op.create_table('risk_rules',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('kind', sa.String(length=24), nullable=False),
    sa.Column('params', sa.Text(), nullable=False),
    sa.Column('action', sa.String(length=8), nullable=False),
    sa.Column('is_active', sa.Boolean(), nullable=False),
    sa.Column('sort_order', sa.Integer(), nullable=False),
    sa.Column('created_by', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime().with_variant(mysql.DATETIME(fsp=6), 'mariadb').with_variant(mysql.DATETIME(fsp=6), 'mysql'), nullable=False),
    sa.Column('updated_at', sa.DateTime().with_variant(mysql.DATETIME(fsp=6), 'mariadb').with_variant(mysql.DATETIME(fsp=6), 'mysql'), nullable=False),
    sa.CheckConstraint("action IN ('allow', 'captcha', 'review', 'refuse')", name=op.f('ck_risk_rules_action_known')),
    sa.CheckConstraint("kind IN ('ip_velocity', 'email_velocity', 'device_velocity', 'ip_list', 'email_list', 'amount_anomaly', 'repeat_payment', 'failed_lookups')", name=op.f('ck_risk_rules_kind_known')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_risk_rules')),
    mysql_charset='utf8mb4',
    mysql_collate='utf8mb4_bin',
    mysql_engine='InnoDB'
    )
    # op.add_column, not the batch: it would rebuild the SQLite table for an SQL-expression default.
    op.add_column('orders', sa.Column('device_tag', sa.String(length=32), nullable=True))
    op.add_column('orders', sa.Column('email_folded', sa.String(length=254), nullable=True))
    op.add_column('orders', sa.Column('risk_review', sa.Boolean(), server_default=sa.text('0'), nullable=False))
    # Orders placed before: their buyer's e-mail folded (LOWER: what both databases have; the
    # few addresses where it differs from Python's casefold are not worth a pass in Python).
    op.execute("UPDATE orders SET email_folded = LOWER(email)")
    # Plain index statements, outside the batch: the orders table is never copied.
    op.create_index('ix_orders_email_folded_created', 'orders', ['email_folded', 'created_at'], unique=False)
    op.create_index('ix_orders_client_ip_created', 'orders', ['client_ip', 'created_at'], unique=False)
    op.create_index('ix_orders_device_created', 'orders', ['device_tag', 'created_at'], unique=False)



def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index('ix_orders_email_folded_created', table_name='orders')
    op.drop_index('ix_orders_device_created', table_name='orders')
    op.drop_index('ix_orders_client_ip_created', table_name='orders')
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_column('risk_review')
        batch_op.drop_column('email_folded')
        batch_op.drop_column('device_tag')

    op.drop_table('risk_rules')
    op.drop_table('lookup_failures')
    with op.batch_alter_table('risk_decisions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_risk_decisions_order_id'))
        batch_op.drop_index(batch_op.f('ix_risk_decisions_created_at'))

    op.drop_table('risk_decisions')
    with op.batch_alter_table('captcha_uses', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_captcha_uses_expires_at'))

    op.drop_table('captcha_uses')
