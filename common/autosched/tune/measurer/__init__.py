from autosched.tune.measurer.local_measurer import LocalMeasurer
from autosched.tune.measurer.measurer import Measurer
from autosched.tune.measurer.replay_measurer import ReplayMeasurer

__all__ = ["LocalMeasurer", "Measurer", "ReplayMeasurer"]
