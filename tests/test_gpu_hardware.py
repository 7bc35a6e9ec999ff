"""GPU hardware parameters, target keys, cross-knob limits and the replay runner: the parts
of GPU support that need no card."""

from __future__ import annotations

import math
import random
import re
from dataclasses import replace

import pytest
from pydantic import TypeAdapter, ValidationError

from autosched.errors import ConfigError, InvalidHardwareError
from autosched.gpu_hardware import detect_gpu_hardware, gpu_from_tag
from autosched.hardware import GpuParams, HardwareParams, reference_target, target_json
from autosched.host_description import HostDescription, describe_host
from autosched.schemas import TargetKey
from autosched.settings import get_settings
from autosched.space import Config, ProductLimit, StageSpace, Template, TileKnob
from autosched.tune.builder import artifact_name
from autosched.tune.replay_runner import NOT_RECORDED, Recorded, ReplayRunner, write_recording
from autosched.tune.runner import RunnerInput
from autosched.tune.search_strategy import EvolutionarySearch
from autosched.tune.trial import TrialStatus
from autosched.vocabulary import TARGET_KEY_PATTERN

H100 = "nvidia/nvidia-h100"


@pytest.fixture
def gpu_hw() -> HardwareParams:
    return detect_gpu_hardware(tag=H100)


def test_a_tag_gives_the_card_and_the_key_names_its_architecture(gpu_hw) -> None:
    gpu = gpu_hw.gpu
    assert gpu is not None and gpu_hw.kind == "cuda" and gpu_hw.is_gpu
    assert (gpu.arch, gpu.sm_count, gpu.max_threads_per_block) == ("sm_90", 132, 1024)
    assert gpu.max_shared_memory_per_block == 48 * 1024 and gpu.warp_size == 32
    assert gpu.compute_version == (9, 0)
    assert gpu_hw.target_key == "cuda/sm_90/132sm/48k"
    assert re.fullmatch(TARGET_KEY_PATTERN, gpu_hw.target_key)
    assert TypeAdapter(TargetKey).validate_python(gpu_hw.target_key) == gpu_hw.target_key
    # The building host is not part of the key: every H100 host shares the schedules.
    other_host = replace(gpu_hw, mcpu="skylake-avx512", num_cores=64, vector_bits=512)
    assert other_host.target_key == gpu_hw.target_key
    assert gpu_from_tag("nvidia/nvidia-a100").arch == "sm_80"


def test_cuda_target_and_cpu_reference(gpu_hw) -> None:
    target = target_json(gpu_hw)
    assert target["kind"] == "cuda" and target["arch"] == "sm_90"
    assert target["max_shared_memory_per_block"] == 48 * 1024
    assert target["host"] == {"kind": "llvm"}  # generic host code: loads on any host
    assert str(reference_target(gpu_hw).kind.name) == "llvm"


def test_gpu_hardware_round_trips_and_is_checked_like_any_report(gpu_hw) -> None:
    assert HardwareParams.from_json(gpu_hw.to_json()) == gpu_hw
    report = describe_host(gpu_hw)
    assert HostDescription.from_report(report).params == gpu_hw
    bad = {**report, "gpu": {**report["gpu"], "max_threads_per_block": 10**9}}
    with pytest.raises(InvalidHardwareError, match="max_threads_per_block"):
        HostDescription.from_report(bad)
    with pytest.raises(InvalidHardwareError, match="arch"):
        HostDescription.from_report({**report, "gpu": {**report["gpu"], "arch": "sm_90; rm"}})
    with pytest.raises(InvalidHardwareError, match="exactly the keys"):
        HostDescription.from_report({**report, "gpu": {**report["gpu"], "extra": 1}})
    device = {"index": 0, "name": "H200", "compute_version": "9.0"}
    device |= {"multi_processor_count": 132, "max_threads_per_block": -1}
    with pytest.raises(InvalidHardwareError, match=r"^hardware\.cuda_devices\[0\]\.max_threads"):
        HostDescription.from_report({**report, "cuda_devices": [device]})
    with pytest.raises(InvalidHardwareError, match="only then"):
        HardwareParams.from_json({**report, "kind": "llvm"})
    with pytest.raises(InvalidHardwareError, match="only then"):
        HardwareParams.from_json({**report, "gpu": None})


def test_gpu_settings_override_the_tag(monkeypatch) -> None:
    monkeypatch.setenv("AUTOSCHED_GPU_MAX_THREADS_PER_BLOCK", "512")
    monkeypatch.setenv("AUTOSCHED_GPU_SM_COUNT", "114")
    get_settings.cache_clear()
    try:
        hw = detect_gpu_hardware(tag=H100)
    finally:
        get_settings.cache_clear()
    assert hw.gpu is not None and hw.gpu.max_threads_per_block == 512
    assert hw.target_key == "cuda/sm_90/114sm/48k"


def test_unknown_tags_and_devices_are_refused() -> None:
    with pytest.raises(InvalidHardwareError, match="unknown GPU target tag"):
        gpu_from_tag("nvidia/no-such-card")
    with pytest.raises(InvalidHardwareError):
        GpuParams("sm_90", 0, 1024, 49152, 65536, 32, 0)


def _limited_template() -> Template:
    knobs = (
        TileKnob("a", 256, 3, (1, 2, 4, 8, 16, 32, 64)),
        TileKnob("b", 96, 3, (1, 2, 3, 4, 32)),
    )
    limit = ProductLimit("threads", (("a", 1), ("b", 1)), 64)
    return Template("k", (StageSpace("s", "complex_reduction", "", knobs, (limit,)),))


def test_sampled_and_mutated_configs_keep_the_product_limit() -> None:
    template = _limited_template()
    limit = template.stages[0].limits[0]
    rng = random.Random(0)
    configs = [template.sample(rng) for _ in range(300)]
    assert all(limit.product(c.values["s"]) <= 64 for c in configs)
    for c in configs:
        template.validate(c)
        for knob in template.stages[0].knobs:  # the repaired split still covers its extent
            assert math.prod(c.values["s"][knob.name]) >= knob.extent
    # Repair only touches what breaks the limit, and sampling explores up to it.
    assert max(limit.product(c.values["s"]) for c in configs) == 64

    class Flat:
        def predict(self, template, configs):
            return [0.0] * len(configs)

    search = EvolutionarySearch(template, Flat(), seed=1)
    for config in configs[:100]:
        template.validate(search.mutate(config))


def test_a_config_over_the_limit_is_refused_and_limits_round_trip() -> None:
    template = _limited_template()
    over = Config({"s": {"a": [4, 64, 1], "b": [3, 32, 1]}})
    with pytest.raises(ConfigError, match="threads is 2048, over its limit 64"):
        template.validate(over)
    assert Template.from_json(template.to_json()) == template
    repaired = template.repair(over)
    template.validate(repaired)


def test_replay_runner_answers_only_what_was_recorded(tmp_path) -> None:
    recorded = {"stages": {"C": {"x": 1}}}
    write_recording(tmp_path / "rec.jsonl", [Recorded("wl", recorded, (2e-5, 1e-5))])
    runner = ReplayRunner(tmp_path / "rec.jsonl")
    built = tmp_path / artifact_name("wl", recorded)
    built.write_bytes(b"\x7fELF")
    other = tmp_path / artifact_name("wl", {"stages": {"C": {"x": 2}}})
    other.write_bytes(b"\x7fELF")
    ok, missing, gone = runner.run(
        [
            RunnerInput(str(built), {}),
            RunnerInput(str(other), {}),
            RunnerInput(str(tmp_path / "nothing.so"), {}),
        ]
    )
    assert ok.status == TrialStatus.OK and ok.latencies == (2e-5, 1e-5)
    assert missing.status == TrialStatus.RUN_ERROR and missing.error == NOT_RECORDED
    assert gone.status == TrialStatus.RUN_ERROR


def test_target_keys_stay_bounded() -> None:
    for bad in ["cuda/sm_90/132sm/48", "cuda/sm_9000/1sm/1k", "cuda/../1sm/1k", "gpu/x/1sm/1k"]:
        with pytest.raises(ValidationError):
            TypeAdapter(TargetKey).validate_python(bad)
