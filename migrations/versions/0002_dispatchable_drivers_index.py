"""a partial covering index of the drivers who may be offered work

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 21:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DISPATCHABLE = "online AND approved AND current_job_id IS NULL"


def upgrade() -> None:
    op.create_index(
        "ix_driver_profiles_dispatchable",
        "driver_profiles",
        ["user_id"],
        unique=False,
        postgresql_where=sa.text(DISPATCHABLE),
        sqlite_where=sa.text(DISPATCHABLE),
    )


def downgrade() -> None:
    op.drop_index("ix_driver_profiles_dispatchable", table_name="driver_profiles")
