"""audit lifecycle: claim token, finalizer, last dispatch; shard claims of shared audits

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('audits', schema=None) as batch_op:
        batch_op.add_column(sa.Column('holder', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('finalizer', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('last_dispatched_at', sa.DateTime(timezone=True), nullable=True))
    op.create_table('shard_claims',
    sa.Column('audit_id', sa.String(length=32), nullable=False),
    sa.Column('key', sa.String(length=200), nullable=False),
    sa.Column('suite', sa.String(length=64), nullable=False),
    sa.Column('index', sa.Integer(), nullable=False),
    sa.Column('of', sa.Integer(), nullable=False),
    sa.Column('holder', sa.String(length=32), nullable=True),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('done', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['audit_id'], ['audits.id'], ),
    sa.PrimaryKeyConstraint('audit_id', 'key')
    )


def downgrade() -> None:
    op.drop_table('shard_claims')
    with op.batch_alter_table('audits', schema=None) as batch_op:
        batch_op.drop_column('last_dispatched_at')
        batch_op.drop_column('finalizer')
        batch_op.drop_column('holder')
