"""A worker registers what it detected: scheduling parameters, CPU model, CUDA devices."""

from __future__ import annotations

from autosched.db import Worker, session_factory, session_scope
from autosched.hardware import HardwareParams, detect_hardware
from autosched.host_description import cuda_devices
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


def test_register_pins_its_device_key(db_url):
    """A worker registers through the database as a trusted caller: its device key gets a
    pinned hardware row (jobs may then name the key), and the target is derived, not sent."""
    from autosched.db.models import Device
    from autosched.hardware import target_json
    from tests.api_support import unique_device

    hw = detect_hardware()
    factory = session_factory(db_url)
    key = unique_device()
    reg = register(factory, key, hw)
    with session_scope(factory) as session:
        device = session.get(Device, key)
        assert device is not None and HardwareParams.from_json(device.hardware) == hw
        assert device.target_key == reg.target_key and device.pinned_by_token_id is None
        row = session.get(Worker, reg.worker_id)
        assert row.token_id is None and row.target == target_json(hw)
