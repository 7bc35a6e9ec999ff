"""Databases of measured trials (``Database``: JSON lines or memory).

The service's implementation on its own database (``SQLDatabase``) lives with the service:
``autosched.service.sql_database``.
"""

from autosched.tune.database.database import Database, TrialRecord, config_digest
from autosched.tune.database.json_database import JSONDatabase, MemoryDatabase

__all__ = [
    "Database",
    "JSONDatabase",
    "MemoryDatabase",
    "TrialRecord",
    "config_digest",
]
