"""tenants: recent worker time per tenant (fair scheduling, limit locks); the upload-check pool

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('tenant_usage',
    sa.Column('tenant', sa.String(length=64), nullable=False),
    sa.Column('worker_seconds', sa.Float(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('tenant')
    )
    op.create_table('upload_checks',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('tenant', sa.String(length=64), nullable=False),
    sa.Column('slot', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('slot')
    )
    with op.batch_alter_table('upload_checks', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_upload_checks_expires_at'), ['expires_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_upload_checks_tenant'), ['tenant'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('upload_checks', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_upload_checks_tenant'))
        batch_op.drop_index(batch_op.f('ix_upload_checks_expires_at'))
    op.drop_table('upload_checks')
    op.drop_table('tenant_usage')
