"""The locust side of ``bench/load.py``: one open-loop run at a fixed rate.

Started by ``bench/load.py`` as ``locust -f bench/load_locustfile.py --headless --load-spec
SPEC.json ...``; not meant to be run by hand. The spec names the rate, the number of
requests, the requests to cycle through (method, path, body), the headers, the expected
body fragment, the timeout and the file the records go to.

Open loop: request ``i`` is due at ``t0 + i / rate`` whatever happened to the others.
Locust's users are only concurrency slots: user ``k`` of ``U`` sends requests ``k, k + U,
k + 2U, ...`` (``bench.load_stats.user_slots``), sleeping until each one is due. A request
is timed from when it was due, not from when it left, so a user held up by a slow answer
adds its lateness to the next request's latency instead of hiding it (no coordinated
omission).
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import gevent
from locust import FastHttpUser, constant, events, task
from locust.exception import StopUser

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.load_stats import Record, send_offset, user_slots

SPEC: dict[str, Any] = {}
RECORDS: list[Record] = []
_indices = itertools.count()
_finished = itertools.count(1)
_t0: list[float] = []


@events.init_command_line_parser.add_listener
def _arguments(parser: Any) -> None:
    parser.add_argument("--load-spec", type=str, default="", help="bench/load.py's run spec")


@events.init.add_listener
def _load_spec(environment: Any, **_kw: Any) -> None:
    path = environment.parsed_options.load_spec
    if not path:
        raise SystemExit("--load-spec is required (this locustfile is driven by bench/load.py)")
    SPEC.update(json.loads(Path(path).read_text()))
    OpenLoopUser.network_timeout = SPEC["timeout_s"]
    OpenLoopUser.connection_timeout = SPEC["timeout_s"]


@events.test_start.add_listener
def _start(**_kw: Any) -> None:
    # Every user is spawned well before the first request is due.
    _t0.append(time.perf_counter() + SPEC["lead_s"])


@events.quitting.add_listener
def _write(**_kw: Any) -> None:
    Path(SPEC["out"]).write_text(json.dumps(RECORDS))


class OpenLoopUser(FastHttpUser):
    wait_time = constant(0)  # the task sleeps until its next request is due
    concurrency = 1  # one request at a time per user: users are the concurrency slots

    def on_start(self) -> None:
        self.slots = iter(user_slots(next(_indices), SPEC["users"], SPEC["count"]))
        headers = dict(SPEC["headers"])
        self.requests = [
            (r["method"], r["path"], r["body"].encode() if r["body"] is not None else None)
            for r in SPEC["requests"]
        ]
        self.headers = headers
        self.expect = SPEC["expect"].encode() if SPEC["expect"] else None

    @task
    def next_request(self) -> None:
        slot = next(self.slots, None)
        if slot is None:
            if next(_finished) == SPEC["users"]:  # the last user out ends the run
                gevent.spawn_later(0.1, self.environment.runner.quit)
            raise StopUser()
        due = _t0[0] + send_offset(slot, SPEC["rate"])
        delay = due - time.perf_counter()
        if delay > 0:
            gevent.sleep(delay)
        method, path, body = self.requests[slot % len(self.requests)]
        started = time.perf_counter()
        response = self.client.request(method, path, data=body, headers=self.headers)
        ended = time.perf_counter()
        status = response.status_code or 0
        failure = getattr(response, "error", None)  # set on connection errors and timeouts
        error = ""
        if not status:
            error = type(failure).__name__ if failure is not None else "no answer"
        elif not 200 <= status < 300:
            error = f"HTTP {status}"
        elif self.expect is not None:
            try:
                content = response.content or b""
            except Exception as err:  # a body cut short: the request failed
                error = type(err).__name__
            else:
                if self.expect not in content:
                    error = "unexpected body"
        RECORDS.append(Record(slot, started - due, ended - due, status, error))
