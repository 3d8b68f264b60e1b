"""new buyer rewards: an agent rewarded for a new buyer's first order sold through it, once per
buyer e-mail (the key).

Revision ID: 0041
Revises: 0040
Create Date: 2026-12-06 17:03:13.038316

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

# revision identifiers, used by Alembic.
revision: str = '0041'
down_revision: Union[str, Sequence[str], None] = '0040'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('new_buyer_rewards',
    sa.Column('email_folded', sa.String(length=254), nullable=False),
    sa.Column('agent_id', sa.Integer(), nullable=False),
    sa.Column('order_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('amount_cents', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime().with_variant(mysql.DATETIME(fsp=6), 'mariadb').with_variant(mysql.DATETIME(fsp=6), 'mysql'), nullable=False),
    sa.ForeignKeyConstraint(['agent_id'], ['agents.id'], name=op.f('fk_new_buyer_rewards_agent_id_agents')),
    sa.ForeignKeyConstraint(['order_id'], ['orders.id'], name=op.f('fk_new_buyer_rewards_order_id_orders')),
    sa.PrimaryKeyConstraint('email_folded', name=op.f('pk_new_buyer_rewards')),
    mysql_charset='utf8mb4',
    mysql_collate='utf8mb4_bin',
    mysql_engine='InnoDB'
    )
    with op.batch_alter_table('new_buyer_rewards', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_new_buyer_rewards_agent_id'), ['agent_id'], unique=False)



def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table('new_buyer_rewards')   # with its indexes (MariaDB's foreign keys need them until then)
