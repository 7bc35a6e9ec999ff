"""A GPU in the farm, end to end, on a machine without one: a worker for ``cuda:0`` that
describes its card by TVM's H100 tag, builds every candidate for sm_90 for real and answers
runs from recorded measurements (``--replay``; the fake is the runner alone). Through the
REST API to ``autosched fetch --target cuda/sm_90/...``, as a user runs it."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest

from autosched.client import Client
from autosched.gpu_hardware import detect_gpu_hardware
from autosched.schedule import build_template, static_config
from autosched.service.embedded import EmbeddedService
from autosched.settings import Settings
from autosched.tune.replay_runner import NOT_RECORDED, Recorded, write_recording
from tests.farm_support import matmul
from tests.fault_support import free_port

pytestmark = pytest.mark.slow

DEVICE_KEY = "gpu-h100-replay"
H100 = "nvidia/nvidia-h100"
STATIC_LATENCIES = (41e-6, 40e-6, 42e-6)


def test_a_gpu_worker_tunes_and_a_client_fetches_the_cuda_schedule(tmp_path) -> None:
    workload = matmul(128, 128, 128, "gpu_e2e_matmul")
    hw = detect_gpu_hardware(tag=H100)
    # The recording: the static config and a few others, as a GPU host would have measured
    # them; the search proposes other configs too, which the replay runner refuses.
    static = static_config(workload.prim_func, hw)
    template = build_template(workload.prim_func, hw)
    rng = random.Random(7)
    others = [template.sample(rng) for _ in range(3)]
    recording = tmp_path / "h100.jsonl"
    write_recording(
        recording,
        [Recorded(workload.key, static.to_json(), STATIC_LATENCIES)]
        + [Recorded(workload.key, c.to_json(), (80e-6,)) for c in others],
    )

    settings = Settings(data_dir=tmp_path / "state", api_port=free_port())
    gpu_worker = ["--device", "cuda:0", "--gpu-tag", H100, "--replay", str(recording)]
    service = EmbeddedService(
        settings, device_keys=[], worker_args=[[*gpu_worker, "--device-key", DEVICE_KEY]]
    )
    service.start()
    try:
        token = (settings.data_dir / "token").read_text().strip()
        with Client(service.url, token=token) as client:
            (worker,) = client.workers()
            assert worker.target_key == hw.target_key == "cuda/sm_90/132sm/48k"
            assert worker.hardware["gpu"]["arch"] == "sm_90"

            job = client.submit_job([workload], device_key=DEVICE_KEY, trials=6, seed=3)
            done = client.wait_for_job(job.id, poll_s=0.5, timeout=600)
            assert done.state == "succeeded", done.error
            assert done.target_key == hw.target_key
            assert done.best_latency == pytest.approx(41e-6)  # the median of the recorded
            trials = client.job_trials(job.id).trials
            errors = {t.error for t in trials if t.status != "ok"}
            assert errors <= {NOT_RECORDED}, errors  # every candidate built for sm_90

            fetched = client.schedule(workload.key, target=hw.target_key)
            assert fetched.source == "tuned" and fetched.device_key == DEVICE_KEY
            assert fetched.config == static.to_json()

        # What a user types: the CLI fetches and builds the CUDA schedule for the card.
        path = tmp_path / "matmul.json"
        path.write_text(json.dumps(workload.to_json()))
        env = dict(os.environ, AUTOSCHED_API_URL=service.url, AUTOSCHED_API_TOKEN=token)
        fetch = [
            "fetch",
            str(path),
            "--target",
            hw.target_key,
            "--out",
            str(tmp_path / "matmul.so"),
        ]
        out = subprocess.run(
            [sys.executable, "-m", "autosched.cli", *fetch],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert "tuned" in out.stdout and "cuda/sm_90/132sm/48k" in out.stdout
        assert "blockIdx" in out.stdout  # the trace binds the kernel's loops
        assert "built for sm_90" in out.stdout
        library = (tmp_path / "matmul.so").read_bytes()
        assert library.find(b"\x7fELF", 1) > 0  # the kernels' cubin rides in the library
    finally:
        service.stop()
