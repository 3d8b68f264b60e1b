"""loop keys (循环卡密): a product whose one key every buyer gets (delivery_mode 'loop'); an
order keeps the key it was delivered (orders.loop_key_id, nullable: ALTER TABLE, no copy of
orders; the small products table is copied on SQLite for its CHECK).

Revision ID: 0039
Revises: 0038
Create Date: 2026-12-06 16:37:57.702519

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0039'
down_revision: Union[str, Sequence[str], None] = '0038'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.add_column('orders', sa.Column('loop_key_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'),
                                      nullable=True))
    op.create_index('ix_orders_loop_key_id', 'orders', ['loop_key_id'], unique=False,
                    sqlite_where=sa.text('loop_key_id IS NOT NULL'))
    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('ck_products_delivery_mode_known'), type_='check')
        batch_op.create_check_constraint(batch_op.f('ck_products_delivery_mode_known'),
                                         "delivery_mode IN ('auto', 'manual', 'loop', 'supplier')")


def downgrade() -> None:
    """Downgrade schema."""
    # The older schema knows no loop keys: their products' orders are then delivered by hand.
    op.execute("UPDATE products SET delivery_mode = 'manual' WHERE delivery_mode = 'loop'")
    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('ck_products_delivery_mode_known'), type_='check')
        batch_op.create_check_constraint(batch_op.f('ck_products_delivery_mode_known'),
                                         "delivery_mode IN ('auto', 'manual', 'supplier')")
    op.drop_index('ix_orders_loop_key_id', table_name='orders')
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_column('loop_key_id')
