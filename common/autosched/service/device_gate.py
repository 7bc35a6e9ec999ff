"""Sharing a device between the scheduler's jobs: one gate per scheduler process grants
each device key's measure slots by priority, then age."""

from __future__ import annotations

import heapq
import itertools
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: (-priority, created_at timestamp, job id): smaller goes first.
Rank = tuple[int, float, int]


class DeviceGate:
    """At most ``limit`` measure batches in flight per device key, across this scheduler's
    jobs; a free slot goes to the waiting job of highest priority, then the oldest.

    A job holds its slot only while its batch is on the device, not while its search
    proposes the next batch, so jobs sharing a device interleave.
    """

    def __init__(self, limit: int = 1) -> None:
        self.limit = limit
        self._cond = threading.Condition()
        self._in_flight: dict[str, int] = defaultdict(int)
        self._waiting: dict[str, list[tuple[Rank, int]]] = defaultdict(list)
        self._tickets = itertools.count()

    def _grantable(self, key: str, entry: tuple[Rank, int]) -> bool:
        return self._in_flight[key] < self.limit and self._waiting[key][0] == entry

    @contextmanager
    def slot(
        self, device_key: str, rank: Rank, give_up: Callable[[], bool] = lambda: False
    ) -> Iterator[bool]:
        """Hold one of ``device_key``'s slots; yields False (holding none) when ``give_up``,
        asked while waiting, said so (e.g. on cancel)."""
        entry = (rank, next(self._tickets))
        with self._cond:
            heapq.heappush(self._waiting[device_key], entry)
        granted = False
        try:
            while True:
                with self._cond:
                    if self._grantable(device_key, entry):
                        heapq.heappop(self._waiting[device_key])
                        self._in_flight[device_key] += 1
                        self._cond.notify_all()
                        granted = True
                        break
                    self._cond.wait(timeout=0.5)
                if give_up():  # outside the lock: it may query the database
                    break
        finally:
            if not granted:
                with self._cond:
                    self._waiting[device_key].remove(entry)
                    heapq.heapify(self._waiting[device_key])
                    self._cond.notify_all()
        if not granted:
            yield False
            return
        try:
            yield True
        finally:
            with self._cond:
                self._in_flight[device_key] -= 1
                self._cond.notify_all()
