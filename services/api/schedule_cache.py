"""Answers of ``GET /v1/schedules/{key}``, kept per API process and checked at each request.

Building an answer reads the workload, its template and its best config (JSON documents of
several kilobytes), validates and encodes them, and, for a workload not tuned yet, replays
its static schedule in the template sandbox. The answer changes only when a new best config
is published. So each process keeps the encoded answer and its ETag per (workload key,
target key), and every request first reads the best config's ``updated_at`` by primary key
(``schedules.best_version``): the same value as in the kept answer, and the answer is sent
as kept; another, and it is built again.

Why a check per request rather than a TTL: a client that has just seen its job succeed
fetches the schedule and must get the new best, from whichever API process answers. A TTL
would hand out the replaced schedule for up to its length, and dropping entries on publish
would need a channel from the scheduler to every API process. One indexed read costs a
fraction of a millisecond. The ETag lets clients that keep answers revalidate with
``If-None-Match`` and get a bodiless 304; ``Cache-Control: private, no-cache`` lets them (and
browsers) keep it but revalidate each time, and keeps shared caches out, since with
anonymous reads off the answer is only for token holders.

A kept answer is the same for every reader: schedules have no owner and nothing in them is
redacted. The route authenticates before it asks the cache, so no one reads through it what
they could not read without it. A static answer stays valid until a best config appears:
workloads and their templates are written once and never changed or deleted.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from autosched.db.session import session_scope
from autosched.hardware import HardwareParams
from autosched.schemas import ScheduleView
from autosched.service import schedules

#: Clients may keep an answer but must revalidate it; shared caches must not keep it.
CACHE_CONTROL = "private, no-cache"
CacheKey = tuple[str, str]  # workload key, target key


@dataclass(frozen=True)
class ScheduleAnswer:
    """An encoded ``ScheduleView``, the best config version it shows and its ETag."""

    version: datetime | None  # the best config's updated_at; None: the static schedule
    body: bytes
    etag: str

    @classmethod
    def of(cls, view: ScheduleView) -> ScheduleAnswer:
        body = view.model_dump_json().encode()
        return cls(view.updated_at, body, f'"{hashlib.sha256(body).hexdigest()[:32]}"')

    @property
    def headers(self) -> dict[str, str]:
        return {"ETag": self.etag, "Cache-Control": CACHE_CONTROL}

    def matches(self, if_none_match: str | None) -> bool:
        """Whether ``If-None-Match`` names this answer. Weak comparison (``W/`` ignored), as
        RFC 9110 prescribes for that header; ``*`` matches any current answer."""
        if not if_none_match:
            return False
        tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
        return "*" in tags or self.etag in tags


class ScheduleCache:
    """Least recently used answers, at most ``max_entries`` (0: none kept). Route handlers
    run in the thread pool, so every access holds the lock."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._answers: OrderedDict[CacheKey, ScheduleAnswer] = OrderedDict()
        self._lock = threading.Lock()

    def fetch(
        self,
        sessions: sessionmaker[Session],
        workload_key: str,
        target_key: str,
        host_hw: HardwareParams,
    ) -> ScheduleAnswer:
        """The answer for a checked ``target_key``: the kept one while the stored best config
        is the one it shows, else built (``schedules.get_schedule``) and kept. ``NotFoundError``
        as ``get_schedule`` raises it."""
        key = (workload_key, target_key)
        with session_scope(sessions) as session:
            current = schedules.best_version(session, workload_key, target_key)
            kept = self._get(key)
            if kept is not None and kept.version == current:
                return kept
            answer = ScheduleAnswer.of(
                schedules.get_schedule(session, workload_key, target_key, host_hw)
            )
        # Kept only once its transaction committed (a first fetch for a target stores the
        # template the answer comes from). A best config published since ``current`` was
        # read is in the answer with its own version: the next request finds them equal.
        self._put(key, answer)
        return answer

    def _get(self, key: CacheKey) -> ScheduleAnswer | None:
        with self._lock:
            answer = self._answers.get(key)
            if answer is not None:
                self._answers.move_to_end(key)
            return answer

    def _put(self, key: CacheKey, answer: ScheduleAnswer) -> None:
        if self.max_entries == 0:
            return
        with self._lock:
            self._answers[key] = answer
            self._answers.move_to_end(key)
            while len(self._answers) > self.max_entries:
                self._answers.popitem(last=False)
