"""A worker registers what it detected: scheduling parameters, CPU model, CUDA devices."""

from __future__ import annotations

from autosched.db import Worker, session_factory, session_scope
from autosched.hardware import HardwareParams, cuda_devices, detect_hardware
from workers.main import default_device_key, register


def test_register_describes_the_host(db_url):
    hw = detect_hardware()
    factory = session_factory(db_url)
    reg = register(factory, default_device_key(hw), hw)
    with session_scope(factory) as session:
        row = session.get(Worker, reg.worker_id)
        assert row is not None and row.state == "online"
        assert row.device_key == f"cpu-{hw.mcpu}-{hw.num_cores}c"
        assert row.hardware["cpu_model"] and row.hardware["num_cores"] == hw.num_cores
        # This machine has no GPU; a CUDA host lists its devices here.
        assert row.hardware["cuda_devices"] == cuda_devices()
        # The scheduler reads the parameters back and ignores the description.
        assert HardwareParams.from_json(row.hardware) == hw
