from autosched.tune.database.database import Database, TrialRecord, config_digest
from autosched.tune.database.json_database import JSONDatabase, MemoryDatabase

__all__ = ["Database", "JSONDatabase", "MemoryDatabase", "TrialRecord", "config_digest"]
