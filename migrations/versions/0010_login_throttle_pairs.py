"""login throttles per (account name, address) pair

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01

"""
from typing import Sequence, Union

from alembic import op

revision: str = '0010'
down_revision: Union[str, Sequence[str], None] = '0009'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def _scopes(allowed: str) -> None:
    with op.batch_alter_table('login_throttles', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('ck_login_throttles_scope_known'), type_='check')
        batch_op.create_check_constraint(batch_op.f('ck_login_throttles_scope_known'), f"scope IN ({allowed})")


def upgrade() -> None:
    _scopes("'user', 'ip', 'pair'")


def downgrade() -> None:
    op.execute("DELETE FROM login_throttles WHERE scope = 'pair'")
    _scopes("'user', 'ip'")
