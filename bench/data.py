"""Bulk test data for benchmarks: thousands of users in one SQL statement each, and their
bearer tokens signed as the API signs them (argon2 per user through the API would take minutes)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from sqlalchemy import text

from models.accounts import User, issue_token
from models.db import engine, redis_connection
from models.positions import dispatchable_key

INDEX_CHUNK = 10_000


def add_users(role: str, count: int) -> list[int]:
    """Insert `count` users of `role` (drivers online and approved, so named in the index of
    dispatchable drivers: their position reports enter the geo index) and return their ids."""
    with engine().begin() as conn:
        first = conn.execute(text("SELECT coalesce(max(id), 0) + 1 FROM users")).scalar_one()
        conn.execute(
            text(
                "INSERT INTO users (id, role, email, password_hash, name, created_at)"
                " SELECT g, :role, :role || g || '@bench.example', 'not-a-hash', :role || ' ' || g,"
                " now() FROM generate_series(:first, :last) AS g"
            ),
            {"role": role, "first": first, "last": first + count - 1},
        )
        conn.execute(text("SELECT setval('users_id_seq', :last)"), {"last": first + count - 1})
        if role == "driver":
            conn.execute(
                text(
                    "INSERT INTO driver_profiles (user_id, approved, online)"
                    " SELECT g, true, true FROM generate_series(:first, :last) AS g"
                ),
                {"first": first, "last": first + count - 1},
            )
    with engine().connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        # What autovacuum does for a table that grew: plans see the rows that are there,
        # and index-only scans the pages that are all visible.
        for table in ("users", "driver_profiles"):
            conn.execute(text(f"VACUUM ANALYZE {table}"))
    ids = list(range(first, first + count))
    if role == "driver":
        r = redis_connection()
        for start in range(0, count, INDEX_CHUNK):
            r.sadd(dispatchable_key(), *ids[start : start + INDEX_CHUNK])
    return ids


def token_for(user_id: int, role: str) -> str:
    return issue_token(User(id=user_id, role=role))


def bearer(user_id: int, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token_for(user_id, role)}"}


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))]


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(seconds) * 1000, 2),
        "p99_ms": round(percentile(seconds, 99) * 1000, 2),
    }
