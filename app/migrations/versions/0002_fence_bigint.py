"""conversations.creation_fence becomes BIGINT: fences start from Redis's clock in microseconds

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.alter_column("creation_fence", existing_type=sa.Integer(), type_=sa.BigInteger(),
                           existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.alter_column("creation_fence", existing_type=sa.BigInteger(), type_=sa.Integer(),
                           existing_nullable=False)
