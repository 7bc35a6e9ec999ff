"""The service ``bench/load.py`` runs against: its Redis database, its API processes and the
tiny workloads it registers."""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

# Raised for the bench (defaults: 300/minute anonymous, 60/minute submissions): the load
# comes from one address and one token. The limiter still runs on every request.
BENCH_RATE_LIMIT = "10000000/minute"
REDIS_CLAIM_KEY = "autosched-bench-load:owner"


class RedisClaim:
    """An empty Redis database number, marked as this run's, flushed on release."""

    def __init__(self, server: str) -> None:
        import redis

        self.owner = uuid.uuid4().hex
        parts = urlsplit(server)
        for db in range(15, 0, -1):
            url = urlunsplit((parts.scheme, parts.netloc, f"/{db}", "", ""))
            client = redis.Redis.from_url(url)
            if client.set(REDIS_CLAIM_KEY, self.owner, nx=True, ex=24 * 3600):
                if client.dbsize() == 1:
                    self.url, self.client = url, client
                    return
                client.delete(REDIS_CLAIM_KEY)
        raise RuntimeError(f"no empty Redis database (1-15) on {server}; pass --redis-url")

    def release(self) -> None:
        if (self.client.get(REDIS_CLAIM_KEY) or b"").decode() == self.owner:
            self.client.flushdb()


def use_api_workers(svc: Any, workers: int, timeout_s: float = 120.0) -> None:
    """Replace the embedded API child by ``uvicorn --workers N`` on the same port (the
    service itself has no setting for it: ``serve()`` runs one process)."""
    import httpx

    api = next(c for c in svc.children if c.name == "api")
    api.stop()
    api.argv = [
        sys.executable, "-m", "uvicorn", "services.api.app:create_app", "--factory",
        "--host", svc.settings.api_host, "--port", str(svc.settings.api_port),
        "--workers", str(workers),
    ]  # fmt: skip
    api.start(svc._env())  # the same environment as the other children
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{svc.url}/readyz", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"uvicorn with {workers} workers not ready (log {api.log_path})")


def tiny_matmul(m: int, n: int, k: int) -> Any:
    """A workload that builds and runs in milliseconds; the shape makes its key."""
    from tvm import te

    from autosched.wire import Workload

    a = te.placeholder((m, k), name="A")
    b = te.placeholder((k, n), name="B")
    r = te.reduce_axis((0, k), name="k")
    c = te.compute((m, n), lambda i, j: te.sum(a[i, r] * b[r, j], axis=r), name="C")
    return Workload.from_tensors([a, b, c], f"load_matmul_{m}x{n}x{k}")


def register_workloads(client: Any, workloads: Sequence[Any]) -> None:
    """Register ``workloads`` with the service, as many at a time as it builds templates."""
    from concurrent.futures import ThreadPoolExecutor

    # The API builds templates in a pool of two sandboxes: two at a time.
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(client.register_workload, workloads))
