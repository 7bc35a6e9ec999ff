"""The wire format: compute declarations as JSON, never as code.

A client turns its te tensors into a JSON document with ``serialize``; a server turns the
document back into te tensors with ``deserialize`` (or ``Workload.from_json``), after checking
every rule and limit. See ``docs/wire-format.md`` and ``schema.json`` next to this file.
"""

from autosched.wire.deserialize import deserialize
from autosched.wire.key import workload_key
from autosched.wire.models import ComputeDAG
from autosched.wire.serialize import serialize
from autosched.wire.validate import validate_document
from autosched.wire.workload import Workload, load_workload

__all__ = [
    "ComputeDAG",
    "Workload",
    "deserialize",
    "load_workload",
    "serialize",
    "validate_document",
    "workload_key",
]
