"""owners and bindings: api_tokens.device_keys, workers.token_id, jobs.owner_token_id, and
the devices table (a device key's pinned hardware)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-10
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "devices",
        sa.Column("key", sa.String(length=120), nullable=False),
        sa.Column("target_key", sa.String(length=120), nullable=False),
        sa.Column("hardware", sa.JSON(), nullable=False),
        sa.Column("pinned_by_token_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("pinned_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["pinned_by_token_id"],
            ["api_tokens.id"],
            name="fk_devices_pinned_by_token_id_api_tokens",
        ),
        sa.PrimaryKeyConstraint("key"),
    )
    # Existing tokens are granted no device keys (server default), so an old worker token
    # can register nothing until an admin issues a bound one.
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("device_keys", sa.JSON(), nullable=False, server_default=sa.text("'[]'"))
        )
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("token_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            "fk_workers_token_id_api_tokens", "api_tokens", ["token_id"], ["id"]
        )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("owner_token_id", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_jobs_owner_token_id"), ["owner_token_id"])
        batch_op.create_foreign_key(
            "fk_jobs_owner_token_id_api_tokens", "api_tokens", ["owner_token_id"], ["id"]
        )
    # Device keys already served keep working: each is pinned to the hardware of its most
    # recently registered worker (ties broken by the larger id: one row per key).
    op.execute(
        """
        INSERT INTO devices (key, target_key, hardware, pinned_by_token_id, created_at, pinned_at)
        SELECT w.device_key, w.target_key, w.hardware, NULL, w.registered_at, w.registered_at
        FROM workers w
        WHERE w.id = (
            SELECT max(w2.id) FROM workers w2
            WHERE w2.device_key = w.device_key
              AND w2.registered_at = (
                  SELECT max(w3.registered_at) FROM workers w3
                  WHERE w3.device_key = w.device_key
              )
        )
        """
    )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint("fk_jobs_owner_token_id_api_tokens", type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_jobs_owner_token_id"))
        batch_op.drop_column("owner_token_id")
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.drop_constraint("fk_workers_token_id_api_tokens", type_="foreignkey")
        batch_op.drop_column("token_id")
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_column("device_keys")
    op.drop_table("devices")
