"""member price (会员价): products.member_price_cents, a unit for buyers signed in as members or
agents (nullable: ALTER TABLE, no copy).

Revision ID: 0044
Revises: 0043
Create Date: 2026-12-06 20:33:39.261088

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0044'
down_revision: Union[str, Sequence[str], None] = '0043'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.add_column(sa.Column('member_price_cents', sa.BigInteger(), nullable=True))



def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.drop_column('member_price_cents')

