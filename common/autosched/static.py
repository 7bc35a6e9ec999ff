"""Static scheduling: fill every knob from hardware parameters alone (no tuning)."""

from autosched.schedule import static_config, static_schedule

__all__ = ["static_config", "static_schedule"]
