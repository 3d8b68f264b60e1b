"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-22

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

DATETIME = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def fixed_binary(length):
    return sa.LargeBinary().with_variant(mysql.BINARY(length), "mysql", "mariadb")


# utf8mb4 whatever the server's default: product names and keys are Chinese.
# A binary collation compares as SQLite does, so both databases agree.
TABLE_OPTS = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}

revision: str = '0001'
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('audit_head',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('last_hash', sa.String(length=64), nullable=False),
    sa.Column('seal', sa.String(length=64), nullable=True),
    sa.Column('seal_version', sa.SmallInteger(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_head')),
    **TABLE_OPTS,
    )
    op.create_table('audit_log',
    sa.Column('id', BIGID, nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('created_at', DATETIME, nullable=False),
    sa.Column('actor', sa.String(length=128), nullable=False),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('target', sa.String(length=255), nullable=False),
    sa.Column('source_ip', sa.String(length=45), nullable=True),
    sa.Column('details', sa.Text(), nullable=False),
    sa.Column('prev_hash', sa.String(length=64), nullable=False),
    sa.Column('entry_hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_log')),
    sa.UniqueConstraint('seq', name=op.f('uq_audit_log_seq')),
    **TABLE_OPTS,
    )
    # The chain's anchor: seq 0, genesis hash. Every append updates this row.
    op.bulk_insert(sa.table("audit_head", sa.column("id", sa.Integer), sa.column("seq", sa.BigInteger),
                            sa.column("last_hash", sa.String)),
                   [{"id": 1, "seq": 0, "last_hash": "0" * 64}])
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_log_action'), ['action'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_log_actor'), ['actor'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_log_created_at'), ['created_at'], unique=False)

    op.create_table('categories',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('sort_order', sa.Integer(), nullable=False),
    sa.Column('is_active', sa.Boolean(), nullable=False),
    sa.Column('created_at', DATETIME, nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_categories')),
    sa.UniqueConstraint('name', name=op.f('uq_categories_name')),
    **TABLE_OPTS,
    )
    op.create_table('payment_channels',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('code', sa.String(length=32), nullable=False),
    sa.Column('type', sa.String(length=16), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('options', sa.Text(), nullable=False),
    sa.Column('secret_ciphertext', sa.LargeBinary(), nullable=True),
    sa.Column('secret_nonce', fixed_binary(12), nullable=True),
    sa.Column('secret_key_version', sa.SmallInteger(), nullable=True),
    sa.Column('is_enabled', sa.Boolean(), nullable=False),
    sa.Column('sort_order', sa.Integer(), nullable=False),
    sa.Column('created_at', DATETIME, nullable=False),
    sa.Column('updated_at', DATETIME, nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_payment_channels')),
    sa.UniqueConstraint('code', name=op.f('uq_payment_channels_code')),
    **TABLE_OPTS,
    )
    op.create_table('settings',
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('value', sa.Text(), nullable=False),
    sa.Column('updated_at', DATETIME, nullable=False),
    sa.Column('updated_by', sa.String(length=128), nullable=True),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_settings')),
    **TABLE_OPTS,
    )
    op.create_table('staff_users',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('username', sa.String(length=64), nullable=False),
    sa.Column('password_hash', sa.String(length=255), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('is_active', sa.Boolean(), nullable=False),
    sa.Column('totp_secret', sa.String(length=64), nullable=True),
    sa.Column('created_at', DATETIME, nullable=False),
    sa.Column('updated_at', DATETIME, nullable=False),
    sa.Column('password_changed_at', DATETIME, nullable=False),
    sa.Column('last_login_at', DATETIME, nullable=True),
    sa.CheckConstraint("role IN ('owner', 'admin', 'operator', 'support', 'finance', 'auditor', 'verifier')", name=op.f('ck_staff_users_role_known')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_staff_users')),
    sa.UniqueConstraint('username', name=op.f('uq_staff_users_username')),
    **TABLE_OPTS,
    )
    op.create_table('products',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('category_id', sa.Integer(), nullable=True),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('price_cents', sa.BigInteger(), nullable=False),
    sa.Column('cost_price_cents', sa.BigInteger(), nullable=True),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('delivery_mode', sa.String(length=8), nullable=False),
    sa.Column('low_stock_threshold', sa.Integer(), nullable=False),
    sa.Column('min_quantity', sa.Integer(), nullable=False),
    sa.Column('max_quantity', sa.Integer(), nullable=False),
    sa.Column('is_active', sa.Boolean(), nullable=False),
    sa.Column('sort_order', sa.Integer(), nullable=False),
    sa.Column('created_at', DATETIME, nullable=False),
    sa.Column('updated_at', DATETIME, nullable=False),
    sa.CheckConstraint("delivery_mode IN ('auto', 'manual')", name=op.f('ck_products_delivery_mode_known')),
    sa.CheckConstraint('min_quantity >= 1 AND max_quantity >= min_quantity', name=op.f('ck_products_quantity_limits')),
    sa.CheckConstraint('price_cents >= 0', name=op.f('ck_products_price_not_negative')),
    sa.ForeignKeyConstraint(['category_id'], ['categories.id'], name=op.f('fk_products_category_id_categories')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_products')),
    **TABLE_OPTS,
    )
    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_products_category_id'), ['category_id'], unique=False)

    op.create_table('key_imports',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('product_id', sa.Integer(), nullable=False),
    sa.Column('actor', sa.String(length=128), nullable=False),
    sa.Column('created_at', DATETIME, nullable=False),
    sa.Column('encoding', sa.String(length=32), nullable=False),
    sa.Column('imported', sa.Integer(), nullable=False),
    sa.Column('duplicates', sa.Integer(), nullable=False),
    sa.Column('blank', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['product_id'], ['products.id'], name=op.f('fk_key_imports_product_id_products')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_key_imports')),
    **TABLE_OPTS,
    )
    with op.batch_alter_table('key_imports', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_key_imports_product_id'), ['product_id'], unique=False)

    op.create_table('orders',
    sa.Column('id', BIGID, nullable=False),
    sa.Column('order_no', sa.String(length=32), nullable=False),
    sa.Column('product_id', sa.Integer(), nullable=False),
    sa.Column('channel_id', sa.Integer(), nullable=True),
    sa.Column('quantity', sa.Integer(), nullable=False),
    sa.Column('unit_price_cents', sa.BigInteger(), nullable=False),
    sa.Column('amount_cents', sa.BigInteger(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('email', sa.String(length=254), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('token_hash', fixed_binary(32), nullable=False),
    sa.Column('query_password_hash', sa.String(length=255), nullable=True),
    sa.Column('client_ip', sa.String(length=45), nullable=True),
    sa.Column('created_at', DATETIME, nullable=False),
    sa.Column('updated_at', DATETIME, nullable=False),
    sa.Column('expires_at', DATETIME, nullable=False),
    sa.Column('paid_at', DATETIME, nullable=True),
    sa.Column('delivered_at', DATETIME, nullable=True),
    sa.CheckConstraint("status IN ('pending', 'paid', 'delivered', 'expired', 'cancelled', 'refunded', 'held')", name=op.f('ck_orders_status_known')),
    sa.CheckConstraint('amount_cents >= 0', name=op.f('ck_orders_amount_not_negative')),
    sa.CheckConstraint('quantity >= 1', name=op.f('ck_orders_quantity_positive')),
    sa.ForeignKeyConstraint(['channel_id'], ['payment_channels.id'], name=op.f('fk_orders_channel_id_payment_channels')),
    sa.ForeignKeyConstraint(['product_id'], ['products.id'], name=op.f('fk_orders_product_id_products')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_orders')),
    sa.UniqueConstraint('order_no', name=op.f('uq_orders_order_no')),
    **TABLE_OPTS,
    )
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_orders_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_orders_email'), ['email'], unique=False)
        batch_op.create_index(batch_op.f('ix_orders_product_id'), ['product_id'], unique=False)
        batch_op.create_index('ix_orders_status_expires_at', ['status', 'expires_at'], unique=False)

    op.create_table('card_keys',
    sa.Column('id', BIGID, nullable=False),
    sa.Column('product_id', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('import_id', sa.Integer(), nullable=False),
    sa.Column('order_id', BIGID, nullable=True),
    sa.Column('reserved_until', DATETIME, nullable=True),
    sa.Column('ciphertext', sa.LargeBinary(), nullable=False),
    sa.Column('nonce', fixed_binary(12), nullable=False),
    sa.Column('key_version', sa.SmallInteger(), nullable=False),
    sa.Column('fingerprint', fixed_binary(16), nullable=False),
    sa.Column('sold_at', DATETIME, nullable=True),
    sa.ForeignKeyConstraint(['import_id'], ['key_imports.id'], name=op.f('fk_card_keys_import_id_key_imports')),
    sa.ForeignKeyConstraint(['order_id'], ['orders.id'], name=op.f('fk_card_keys_order_id_orders')),
    sa.ForeignKeyConstraint(['product_id'], ['products.id'], name=op.f('fk_card_keys_product_id_products')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_card_keys')),
    sa.UniqueConstraint('product_id', 'fingerprint', name='uq_card_keys_product_fingerprint'),
    **TABLE_OPTS,
    )
    with op.batch_alter_table('card_keys', schema=None) as batch_op:
        batch_op.create_index('ix_card_keys_order_id', ['order_id'], unique=False, sqlite_where=sa.text('order_id IS NOT NULL'))
        batch_op.create_index('ix_card_keys_take', ['product_id', 'status', 'id'], unique=False)

    op.create_table('payments',
    sa.Column('id', BIGID, nullable=False),
    sa.Column('order_id', BIGID, nullable=False),
    sa.Column('channel_id', sa.Integer(), nullable=False),
    sa.Column('trade_no', sa.String(length=64), nullable=False),
    sa.Column('amount_cents', sa.BigInteger(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('raw', sa.Text(), nullable=False),
    sa.Column('created_at', DATETIME, nullable=False),
    sa.ForeignKeyConstraint(['channel_id'], ['payment_channels.id'], name=op.f('fk_payments_channel_id_payment_channels')),
    sa.ForeignKeyConstraint(['order_id'], ['orders.id'], name=op.f('fk_payments_order_id_orders')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_payments')),
    sa.UniqueConstraint('channel_id', 'trade_no', name='uq_payments_channel_trade_no'),
    **TABLE_OPTS,
    )
    with op.batch_alter_table('payments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_payments_order_id'), ['order_id'], unique=False)



def downgrade() -> None:
    # Dropping a table drops its indexes; MySQL refuses to drop an index a
    # foreign key still needs, so tables go children first and indexes with them.
    op.drop_table('payments')
    op.drop_table('card_keys')
    op.drop_table('orders')
    op.drop_table('key_imports')
    op.drop_table('products')
    op.drop_table('staff_users')
    op.drop_table('settings')
    op.drop_table('payment_channels')
    op.drop_table('categories')
    op.drop_table('audit_log')
    op.drop_table('audit_head')
