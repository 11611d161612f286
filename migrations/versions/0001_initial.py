"""Identities and their faces.

Revision ID: 0001
Revises:
Create Date: 2025-01-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "identities",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("external_id", sa.String(length=256), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_identities")),
        sa.UniqueConstraint("external_id", name=op.f("uq_identities_external_id")),
    )
    op.create_index("ix_identities_created_at_id", "identities", ["created_at", "id"])

    op.create_table(
        "faces",
        # Integer on SQLite so the column aliases the rowid and autoincrements.
        sa.Column(
            "key",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("identity_id", sa.Uuid(), nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("bbox", sa.JSON(), nullable=False),
        sa.Column("det_score", sa.Float(), nullable=False),
        sa.Column("landmarks", sa.JSON(), nullable=True),
        sa.Column("image_sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["identity_id"],
            ["identities.id"],
            name=op.f("fk_faces_identity_id_identities"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_faces")),
        sa.UniqueConstraint("id", name=op.f("uq_faces_id")),
        # AUTOINCREMENT: a deleted key is never handed out again (keys are FAISS ids).
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_faces_identity_id"), "faces", ["identity_id"])
    op.create_index(op.f("ix_faces_model"), "faces", ["model"])
    op.create_index(op.f("ix_faces_image_sha256"), "faces", ["image_sha256"])
    op.create_index(
        "ix_faces_identity_id_image_sha256_model", "faces", ["identity_id", "image_sha256", "model"]
    )


def downgrade() -> None:
    op.drop_index("ix_faces_identity_id_image_sha256_model", table_name="faces")
    op.drop_index(op.f("ix_faces_image_sha256"), table_name="faces")
    op.drop_index(op.f("ix_faces_model"), table_name="faces")
    op.drop_index(op.f("ix_faces_identity_id"), table_name="faces")
    op.drop_table("faces")
    op.drop_index("ix_identities_created_at_id", table_name="identities")
    op.drop_table("identities")
