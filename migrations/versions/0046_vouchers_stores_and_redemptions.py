"""vouchers, stores and redemptions

Revision ID: 0046
Revises: 0045
Create Date: 2026-12-07 04:10:58.103531

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

# revision identifiers, used by Alembic.
revision: str = '0046'
down_revision: Union[str, Sequence[str], None] = '0045'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('stores',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=80), nullable=False),
    sa.Column('address', sa.String(length=200), nullable=False),
    sa.Column('is_active', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime().with_variant(mysql.DATETIME(fsp=6), 'mariadb').with_variant(mysql.DATETIME(fsp=6), 'mysql'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_stores')),
    sa.UniqueConstraint('name', name=op.f('uq_stores_name')),
    mysql_charset='utf8mb4',
    mysql_collate='utf8mb4_bin',
    mysql_engine='InnoDB'
    )
    op.create_table('store_verifiers',
    sa.Column('store_id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('is_manager', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['store_id'], ['stores.id'], name=op.f('fk_store_verifiers_store_id_stores'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['staff_users.id'], name=op.f('fk_store_verifiers_user_id_staff_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('store_id', 'user_id', name=op.f('pk_store_verifiers')),
    mysql_charset='utf8mb4',
    mysql_collate='utf8mb4_bin',
    mysql_engine='InnoDB'
    )
    with op.batch_alter_table('store_verifiers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_store_verifiers_user_id'), ['user_id'], unique=False)

    op.create_table('voucher_terms',
    sa.Column('product_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('uses', sa.Integer(), nullable=False),
    sa.Column('value_cents', sa.BigInteger(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('entitlement', sa.String(length=300), nullable=False),
    sa.Column('valid_days', sa.Integer(), nullable=True),
    sa.Column('valid_from', sa.DateTime().with_variant(mysql.DATETIME(fsp=6), 'mariadb').with_variant(mysql.DATETIME(fsp=6), 'mysql'), nullable=True),
    sa.Column('valid_until', sa.DateTime().with_variant(mysql.DATETIME(fsp=6), 'mariadb').with_variant(mysql.DATETIME(fsp=6), 'mysql'), nullable=True),
    sa.Column('alphabet', sa.String(length=40), nullable=False),
    sa.Column('code_length', sa.SmallInteger(), nullable=False),
    sa.Column('keep_in_stock', sa.Integer(), nullable=False),
    sa.Column('store_ids', sa.String(length=400), nullable=True),
    sa.Column('updated_at', sa.DateTime().with_variant(mysql.DATETIME(fsp=6), 'mariadb').with_variant(mysql.DATETIME(fsp=6), 'mysql'), nullable=False),
    sa.CheckConstraint("(kind = 'uses' AND uses >= 1) OR (kind = 'value' AND value_cents > 0)", name=op.f('ck_voucher_terms_voucher_terms_shape')),
    sa.CheckConstraint("kind IN ('uses', 'value')", name=op.f('ck_voucher_terms_voucher_kind_known')),
    sa.ForeignKeyConstraint(['product_id'], ['products.id'], name=op.f('fk_voucher_terms_product_id_products')),
    sa.PrimaryKeyConstraint('product_id', name=op.f('pk_voucher_terms')),
    mysql_charset='utf8mb4',
    mysql_collate='utf8mb4_bin',
    mysql_engine='InnoDB'
    )
    op.create_table('voucher_batches',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('product_id', sa.Integer(), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.Column('reason', sa.String(length=200), nullable=False),
    sa.Column('actor', sa.String(length=128), nullable=False),
    sa.Column('import_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime().with_variant(mysql.DATETIME(fsp=6), 'mariadb').with_variant(mysql.DATETIME(fsp=6), 'mysql'), nullable=False),
    sa.Column('voided_at', sa.DateTime().with_variant(mysql.DATETIME(fsp=6), 'mariadb').with_variant(mysql.DATETIME(fsp=6), 'mysql'), nullable=True),
    sa.ForeignKeyConstraint(['import_id'], ['key_imports.id'], name=op.f('fk_voucher_batches_import_id_key_imports')),
    sa.ForeignKeyConstraint(['product_id'], ['products.id'], name=op.f('fk_voucher_batches_product_id_products')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_voucher_batches')),
    mysql_charset='utf8mb4',
    mysql_collate='utf8mb4_bin',
    mysql_engine='InnoDB'
    )
    with op.batch_alter_table('voucher_batches', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_voucher_batches_product_id'), ['product_id'], unique=False)

    op.create_table('vouchers',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('card_key_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('product_id', sa.Integer(), nullable=False),
    sa.Column('lookup', sa.LargeBinary().with_variant(sa.BINARY(length=16), 'mariadb').with_variant(sa.BINARY(length=16), 'mysql'), nullable=False),
    sa.Column('key_version', sa.SmallInteger(), nullable=False),
    sa.Column('status', sa.String(length=10), nullable=False),
    sa.Column('uses_left', sa.Integer(), nullable=False),
    sa.Column('value_left_cents', sa.BigInteger(), nullable=False),
    sa.Column('valid_from', sa.DateTime().with_variant(mysql.DATETIME(fsp=6), 'mariadb').with_variant(mysql.DATETIME(fsp=6), 'mysql'), nullable=True),
    sa.Column('valid_until', sa.DateTime().with_variant(mysql.DATETIME(fsp=6), 'mariadb').with_variant(mysql.DATETIME(fsp=6), 'mysql'), nullable=True),
    sa.Column('issued_at', sa.DateTime().with_variant(mysql.DATETIME(fsp=6), 'mariadb').with_variant(mysql.DATETIME(fsp=6), 'mysql'), nullable=True),
    sa.Column('order_id', sa.Integer(), nullable=True),
    sa.Column('batch_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime().with_variant(mysql.DATETIME(fsp=6), 'mariadb').with_variant(mysql.DATETIME(fsp=6), 'mysql'), nullable=False),
    sa.CheckConstraint("status IN ('stock', 'active', 'void', 'refunded')", name=op.f('ck_vouchers_voucher_status_known')),
    sa.CheckConstraint('uses_left >= 0 AND value_left_cents >= 0', name=op.f('ck_vouchers_voucher_left_not_negative')),
    sa.ForeignKeyConstraint(['batch_id'], ['voucher_batches.id'], name=op.f('fk_vouchers_batch_id_voucher_batches')),
    sa.ForeignKeyConstraint(['card_key_id'], ['card_keys.id'], name=op.f('fk_vouchers_card_key_id_card_keys')),
    sa.ForeignKeyConstraint(['product_id'], ['products.id'], name=op.f('fk_vouchers_product_id_products')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_vouchers')),
    sa.UniqueConstraint('card_key_id', name=op.f('uq_vouchers_card_key_id')),
    sa.UniqueConstraint('lookup', name=op.f('uq_vouchers_lookup')),
    mysql_charset='utf8mb4',
    mysql_collate='utf8mb4_bin',
    mysql_engine='InnoDB'
    )
    with op.batch_alter_table('vouchers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_vouchers_batch_id'), ['batch_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_vouchers_order_id'), ['order_id'], unique=False)

    op.create_table('redemptions',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('voucher_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('code_lookup', sa.LargeBinary().with_variant(sa.BINARY(length=16), 'mariadb').with_variant(sa.BINARY(length=16), 'mysql'), nullable=True),
    sa.Column('product_id', sa.Integer(), nullable=True),
    sa.Column('store_id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('outcome', sa.String(length=10), nullable=False),
    sa.Column('reason', sa.String(length=16), nullable=True),
    sa.Column('uses', sa.Integer(), nullable=False),
    sa.Column('amount_cents', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime().with_variant(mysql.DATETIME(fsp=6), 'mariadb').with_variant(mysql.DATETIME(fsp=6), 'mysql'), nullable=False),
    sa.Column('undone_at', sa.DateTime().with_variant(mysql.DATETIME(fsp=6), 'mariadb').with_variant(mysql.DATETIME(fsp=6), 'mysql'), nullable=True),
    sa.Column('undone_by', sa.Integer(), nullable=True),
    sa.Column('undo_reason', sa.String(length=200), nullable=True),
    sa.CheckConstraint("outcome IN ('redeemed', 'refused')", name=op.f('ck_redemptions_redemption_outcome_known')),
    sa.ForeignKeyConstraint(['store_id'], ['stores.id'], name=op.f('fk_redemptions_store_id_stores')),
    sa.ForeignKeyConstraint(['user_id'], ['staff_users.id'], name=op.f('fk_redemptions_user_id_staff_users')),
    sa.ForeignKeyConstraint(['voucher_id'], ['vouchers.id'], name=op.f('fk_redemptions_voucher_id_vouchers')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_redemptions')),
    mysql_charset='utf8mb4',
    mysql_collate='utf8mb4_bin',
    mysql_engine='InnoDB'
    )
    with op.batch_alter_table('redemptions', schema=None) as batch_op:
        batch_op.create_index('ix_redemptions_store_time', ['store_id', 'created_at'], unique=False)
        batch_op.create_index('ix_redemptions_time', ['created_at'], unique=False)
        batch_op.create_index('ix_redemptions_voucher', ['voucher_id', 'id'], unique=False)



def downgrade() -> None:
    """Downgrade schema."""
    # DROP TABLE takes its indexes with it (MariaDB refuses to drop an index a foreign key uses).
    for table in ('redemptions', 'vouchers', 'voucher_batches', 'voucher_terms', 'store_verifiers', 'stores'):
        op.drop_table(table)
