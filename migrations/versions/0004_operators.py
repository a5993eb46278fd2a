"""operators, driver suspension and the driver event log

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 16:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROLES = "role IN ('customer', 'driver', 'operator')"
V3_ROLES = "role IN ('customer', 'driver')"
DISPATCHABLE = "online AND approved AND suspended_at IS NULL AND current_job_id IS NULL"
V3_DISPATCHABLE = "online AND approved AND current_job_id IS NULL"


def _users_roles(check: str) -> None:
    """On SQLite a rebuild of `users` (migrations/env.py turns foreign keys off for it)."""
    with op.batch_alter_table("users") as users:
        users.drop_constraint("ck_users_role", type_="check")
        users.create_check_constraint("ck_users_role", sa.text(check))


def _dispatchable_index(where: str) -> None:
    op.create_index(
        "ix_driver_profiles_dispatchable",
        "driver_profiles",
        ["user_id"],
        unique=False,
        postgresql_where=sa.text(where),
        sqlite_where=sa.text(where),
    )


def upgrade() -> None:
    _users_roles(ROLES)
    op.add_column(
        "driver_profiles", sa.Column("suspended_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.drop_index("ix_driver_profiles_dispatchable", table_name="driver_profiles")
    _dispatchable_index(DISPATCHABLE)
    op.create_table(
        "driver_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("driver_id", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("actor_id", sa.Integer(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("type IN ('approved', 'suspended')", name="ck_driver_events_type"),
        sa.ForeignKeyConstraint(["driver_id"], ["users.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["actor_id"], ["users.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_driver_events_driver", "driver_events", ["driver_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_driver_events_driver", table_name="driver_events")
    op.drop_table("driver_events")
    # Without the column, a suspended driver must still never be offered work.
    op.execute("UPDATE driver_profiles SET approved = false WHERE suspended_at IS NOT NULL")
    op.drop_index("ix_driver_profiles_dispatchable", table_name="driver_profiles")
    with op.batch_alter_table("driver_profiles") as profiles:
        profiles.drop_column("suspended_at")
    _dispatchable_index(V3_DISPATCHABLE)
    op.execute("DELETE FROM users WHERE role = 'operator'")
    _users_roles(V3_ROLES)
