"""product variants (SKUs, 规格): a product may be a variant of another (products.variant_of),
chosen by its variant_name on that product's page. The products table is small: SQLite copies
it (batch mode) to add the foreign key.

Revision ID: 0043
Revises: 0042
Create Date: 2026-12-06 20:13:06.049854

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0043'
down_revision: Union[str, Sequence[str], None] = '0042'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.add_column(sa.Column('variant_of', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('variant_name', sa.String(length=64), server_default='', nullable=False))
        batch_op.create_index(batch_op.f('ix_products_variant_of'), ['variant_of'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_products_variant_of_products'), 'products', ['variant_of'], ['id'])



def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_products_variant_of_products'), type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_products_variant_of'))
        batch_op.drop_column('variant_name')
        batch_op.drop_column('variant_of')

