"""the job's whole life: arrive, start, complete, release, decline; the job_events outbox

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUSES = (
    "status IN ('pending', 'accepted', 'arrived', 'in_progress', 'completed', 'cancelled',"
    " 'expired')"
)
V1_STATUSES = "status IN ('pending', 'accepted', 'cancelled', 'expired')"
EVENT_TYPES = (
    "type IN ('created', 'offered', 'accepted', 'arrived', 'started', 'completed', 'released',"
    " 'declined', 'cancelled', 'expired')"
)


def upgrade() -> None:
    with op.batch_alter_table("jobs") as jobs:
        jobs.drop_constraint("ck_jobs_status", type_="check")
        jobs.create_check_constraint("ck_jobs_status", sa.text(STATUSES))
        jobs.add_column(sa.Column("arrived_at", sa.DateTime(timezone=True), nullable=True))
        jobs.add_column(sa.Column("started_at", sa.DateTime(timezone=True), nullable=True))
        jobs.add_column(sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True))
        jobs.add_column(sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True))
        jobs.add_column(sa.Column("cancelled_by", sa.String(length=16), nullable=True))
        jobs.add_column(
            sa.Column("offer_round", sa.Integer(), nullable=False, server_default="1")
        )
        jobs.drop_column("dispatched_at")
    op.execute("UPDATE jobs SET cancelled_at = ended_at, cancelled_by = 'customer'"
               " WHERE status = 'cancelled'")
    op.create_index("ix_jobs_driver_created", "jobs", ["driver_id", "created_at"])

    with op.batch_alter_table("offers") as offers:
        offers.add_column(sa.Column("round", sa.Integer(), nullable=False, server_default="1"))
        offers.add_column(sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True))
        offers.add_column(sa.Column("closed_reason", sa.String(length=16), nullable=True))
        offers.create_check_constraint(
            "ck_offers_closed_reason", sa.text("closed_reason IN ('declined', 'released')")
        )

    op.create_table(
        "job_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor_id", sa.Integer(), nullable=True),
        sa.Column("actor_role", sa.String(length=16), nullable=True),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("announced_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("push_due_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("push_attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("push_tokens", sa.JSON(), nullable=True),
        sa.CheckConstraint(EVENT_TYPES, name="ck_job_events_type"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["actor_id"], ["users.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_job_events_job", "job_events", ["job_id", "id"])
    op.create_index(
        "ix_job_events_unannounced",
        "job_events",
        ["id"],
        postgresql_where=sa.text("announced_at IS NULL"),
        sqlite_where=sa.text("announced_at IS NULL"),
    )
    op.create_index(
        "ix_job_events_push_due",
        "job_events",
        ["push_due_at"],
        postgresql_where=sa.text("push_due_at IS NOT NULL"),
        sqlite_where=sa.text("push_due_at IS NOT NULL"),
    )
    # The history of jobs made before the log existed, already announced.
    op.execute(
        "INSERT INTO job_events (job_id, type, at, actor_id, actor_role, data, announced_at)"
        " SELECT id, 'created', created_at, customer_id, 'customer', '{}', created_at FROM jobs"
    )
    op.execute(
        "INSERT INTO job_events (job_id, type, at, actor_id, actor_role, data, announced_at)"
        " SELECT id, 'accepted', accepted_at, driver_id, 'driver', '{}', accepted_at FROM jobs"
        " WHERE accepted_at IS NOT NULL"
    )
    op.execute(
        "INSERT INTO job_events (job_id, type, at, actor_id, actor_role, data, announced_at)"
        " SELECT id, status, ended_at,"
        " CASE WHEN status = 'cancelled' THEN customer_id END,"
        " CASE WHEN status = 'cancelled' THEN 'customer' END, '{}', ended_at FROM jobs"
        " WHERE status IN ('cancelled', 'expired') AND ended_at IS NOT NULL"
    )


def downgrade() -> None:
    op.drop_index("ix_job_events_push_due", table_name="job_events")
    op.drop_index("ix_job_events_unannounced", table_name="job_events")
    op.drop_index("ix_job_events_job", table_name="job_events")
    op.drop_table("job_events")
    with op.batch_alter_table("offers") as offers:
        offers.drop_constraint("ck_offers_closed_reason", type_="check")
        offers.drop_column("closed_reason")
        offers.drop_column("closed_at")
        offers.drop_column("round")
    op.drop_index("ix_jobs_driver_created", table_name="jobs")
    op.execute("UPDATE jobs SET status = 'cancelled', driver_id = NULL"
               " WHERE status IN ('arrived', 'in_progress')")
    op.execute("UPDATE jobs SET status = 'expired' WHERE status = 'completed'")
    with op.batch_alter_table("jobs") as jobs:
        jobs.add_column(sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=True))
        jobs.drop_column("offer_round")
        jobs.drop_column("cancelled_by")
        jobs.drop_column("cancelled_at")
        jobs.drop_column("completed_at")
        jobs.drop_column("started_at")
        jobs.drop_column("arrived_at")
        jobs.drop_constraint("ck_jobs_status", type_="check")
        jobs.create_check_constraint("ck_jobs_status", sa.text(V1_STATUSES))
