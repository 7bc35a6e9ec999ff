"""The records store: every trial, keyed by workload key and target.

``Database`` is the interface; ``JSONDatabase`` keeps records as JSON lines in one file
(append-only, readable, resumable) and ``MemoryDatabase`` keeps them in memory. The
service's implementation on its own database (``SQLDatabase``) lives with the service:
``autosched.service.sql_database``.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path

from autosched.tune.trial import TrialRecord


class Database(ABC):
    @abstractmethod
    def commit(self, record: TrialRecord) -> None:
        """Store one trial (idempotent for the same workload, target and config)."""

    @abstractmethod
    def records(self, workload_key: str, target: str) -> list[TrialRecord]:
        """All trials of a workload on a target, in commit order."""

    def best(self, workload_key: str, target: str) -> TrialRecord | None:
        """The fastest verified trial: wrong answers and failures never qualify."""
        ok = [r for r in self.records(workload_key, target) if r.ok]
        return min(ok, key=lambda r: r.result.latency) if ok else None


class JSONDatabase(Database):
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._records: list[TrialRecord] = []
        self._seen: set[tuple[str, str, str]] = set()
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    self._remember(TrialRecord.from_json(json.loads(line)))

    def _remember(self, record: TrialRecord) -> bool:
        key = (record.workload_key, record.target, record.digest)
        if key in self._seen:
            return False
        self._seen.add(key)
        self._records.append(record)
        return True

    def commit(self, record: TrialRecord) -> None:
        if self._remember(record):
            with self.path.open("a") as f:
                f.write(json.dumps(record.to_json(), sort_keys=True) + "\n")

    def records(self, workload_key: str, target: str) -> list[TrialRecord]:
        return [r for r in self._records if r.workload_key == workload_key and r.target == target]


class MemoryDatabase(Database):
    """The same contract, kept in memory (tests, one-off runs)."""

    def __init__(self) -> None:
        self._by_key: dict[tuple[str, str], dict[str, TrialRecord]] = {}

    def commit(self, record: TrialRecord) -> None:
        self._by_key.setdefault((record.workload_key, record.target), {}).setdefault(
            record.digest, record
        )

    def records(self, workload_key: str, target: str) -> list[TrialRecord]:
        return list(self._by_key.get((workload_key, target), {}).values())
