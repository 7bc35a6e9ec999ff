"""``INSERT ... ON CONFLICT`` for both backends: one statement, so concurrent writers (two
workers recording, two schedulers inserting) race inside the database, not in Python."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session


def insert_for(session: Session, model: Any) -> Any:
    """The dialect's ``insert(model)`` (PostgreSQL and SQLite both have ``on_conflict_*``)."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - the service supports exactly these two
        raise NotImplementedError(f"no upsert for database dialect {name!r}")
    return insert(model)
