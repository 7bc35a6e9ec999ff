"""Records as JSON lines in one file: append-only, readable, resumable."""

from __future__ import annotations

import json
from pathlib import Path

from autosched.tune.database.database import Database, TrialRecord


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
