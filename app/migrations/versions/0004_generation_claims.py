"""messages.claimed_by, claimed_until (one generation per user message), context_upto (what the
agent saw when it wrote a reply), version, and reply_versions (Regenerate keeps earlier replies)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

from app.models import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("claimed_until", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("context_upto", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("version", sa.Integer(), nullable=False, server_default="1"))
    op.create_table(
        "reply_versions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("reply_id", sa.Integer(), sa.ForeignKey("messages.id"), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("context_upto", sa.Integer(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("reply_id", "version", name="uq_reply_versions_version"),
    )
    op.create_index("ix_reply_versions_reply_id", "reply_versions", ["reply_id"])
    op.create_index("ix_messages_pending", "messages", ["conversation_id", "id"],
                    sqlite_where=sa.text("status = 'pending'"), postgresql_where=sa.text("status = 'pending'"))


def downgrade() -> None:
    op.drop_index("ix_messages_pending", table_name="messages")
    op.drop_index("ix_reply_versions_reply_id", table_name="reply_versions")
    op.drop_table("reply_versions")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("version")
        batch.drop_column("context_upto")
        batch.drop_column("claimed_until")
        batch.drop_column("claimed_by")
