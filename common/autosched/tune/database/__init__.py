from typing import Any

from autosched.tune.database.database import Database, TrialRecord, config_digest
from autosched.tune.database.json_database import JSONDatabase, MemoryDatabase

__all__ = [
    "Database",
    "JSONDatabase",
    "MemoryDatabase",
    "SQLDatabase",
    "TrialRecord",
    "config_digest",
]


def __getattr__(name: str) -> Any:
    # SQLDatabase pulls in SQLAlchemy and the service's models: only for those who use it.
    if name == "SQLDatabase":
        from autosched.tune.database.sql_database import SQLDatabase

        return SQLDatabase
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
