"""The service's database: models, sessions, migrations."""

from autosched.db.models import (
    ApiToken,
    Base,
    BestConfig,
    Job,
    JobWorkload,
    TemplateRow,
    Trial,
    Worker,
    WorkloadRow,
)
from autosched.db.session import (
    engine_for,
    get_engine,
    session_factory,
    session_scope,
    upgrade_database,
)

__all__ = [
    "ApiToken",
    "Base",
    "BestConfig",
    "Job",
    "JobWorkload",
    "TemplateRow",
    "Trial",
    "Worker",
    "WorkloadRow",
    "engine_for",
    "get_engine",
    "session_factory",
    "session_scope",
    "upgrade_database",
]
