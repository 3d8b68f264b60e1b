"""staff 2fa, recovery codes, login throttles, session epoch

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-22

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

DATETIME = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def _binary(length: int):
    return sa.LargeBinary().with_variant(mysql.BINARY(length), "mysql", "mariadb")


revision: str = '0008'
down_revision: Union[str, Sequence[str], None] = '0007'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('login_throttles',
    sa.Column('scope', sa.String(length=8), nullable=False),
    sa.Column('key', sa.String(length=128), nullable=False),
    sa.Column('failures', sa.Integer(), nullable=False),
    sa.Column('last_failure_at', DATETIME, nullable=False),
    sa.Column('locked_until', DATETIME, nullable=True),
    sa.CheckConstraint("scope IN ('user', 'ip')", name=op.f('ck_login_throttles_scope_known')),
    sa.PrimaryKeyConstraint('scope', 'key', name=op.f('pk_login_throttles')),
    mysql_charset='utf8mb4',
    mysql_collate='utf8mb4_bin',
    mysql_engine='InnoDB'
    )
    op.create_table('staff_recovery_codes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('code_hash', _binary(32), nullable=False),
    sa.Column('created_at', DATETIME, nullable=False),
    sa.Column('used_at', DATETIME, nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['staff_users.id'], name=op.f('fk_staff_recovery_codes_user_id_staff_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_staff_recovery_codes')),
    mysql_charset='utf8mb4',
    mysql_collate='utf8mb4_bin',
    mysql_engine='InnoDB'
    )
    with op.batch_alter_table('staff_recovery_codes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_staff_recovery_codes_user_id'), ['user_id'], unique=False)

    with op.batch_alter_table('staff_users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('totp_ciphertext', sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column('totp_nonce', _binary(12), nullable=True))
        batch_op.add_column(sa.Column('totp_key_version', sa.SmallInteger(), nullable=True))
        batch_op.add_column(sa.Column('totp_enabled', sa.Boolean(), server_default=sa.text('0'), nullable=False))
        batch_op.add_column(sa.Column('totp_last_step', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('session_epoch', sa.Integer(), server_default=sa.text('0'), nullable=False))
        # Never used before 2FA existed: nothing to carry over.
        batch_op.drop_column('totp_secret')



def downgrade() -> None:
    with op.batch_alter_table('staff_users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('totp_secret', sa.VARCHAR(length=64), nullable=True))
        batch_op.drop_column('session_epoch')
        batch_op.drop_column('totp_last_step')
        batch_op.drop_column('totp_enabled')
        batch_op.drop_column('totp_key_version')
        batch_op.drop_column('totp_nonce')
        batch_op.drop_column('totp_ciphertext')

    op.drop_table('staff_recovery_codes')   # its index goes with it (MySQL keeps it for the FK)
    op.drop_table('login_throttles')
