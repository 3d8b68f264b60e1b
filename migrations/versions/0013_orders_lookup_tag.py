"""orders: lookup_tag, so the e-mail + query password lookup is one indexed query

An HMAC of the buyer's e-mail and query password under the data key
(kamengd.vault.Vault.lookup_tags) replaces five argon2 checks per lookup.
A nullable column added at the end: no table copy on SQLite, instant on
MariaDB; orders placed before it keep their argon2 hash only.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

revision: str = '0013'
down_revision: Union[str, Sequence[str], None] = '0012'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.add_column('orders', sa.Column(
        'lookup_tag', sa.LargeBinary().with_variant(sa.BINARY(length=32), 'mariadb')
        .with_variant(sa.BINARY(length=32), 'mysql'), nullable=True))
    op.create_index('ix_orders_lookup_tag', 'orders', ['lookup_tag'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_orders_lookup_tag', table_name='orders')
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_column('lookup_tag')
