"""``Workload``: a validated compute declaration together with its te tensors, PrimFunc and key."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from tvm import te, tirx

from autosched.errors import WireFormatError
from autosched.settings import get_settings
from autosched.wire.deserialize import build
from autosched.wire.key import workload_key
from autosched.wire.models import ComputeDAG
from autosched.wire.serialize import serialize
from autosched.wire.validate import validate_document


@dataclass(frozen=True, eq=False)
class Workload:
    """One workload. Equality and hashing go by ``key`` (names do not matter)."""

    name: str
    dag: ComputeDAG
    tensors: list[te.Tensor]
    prim_func: tirx.PrimFunc
    key: str

    @classmethod
    def from_json(cls, doc: ComputeDAG | dict[str, Any] | str | bytes) -> Workload:
        """Validate, rebuild the te tensors, create the PrimFunc and its key.

        Raises ``WireFormatError`` for any bad input, including one TVM itself refuses.
        """
        try:
            dag = validate_document(doc)
        except WireFormatError:
            raise
        except Exception as e:  # see deserialize(): nothing but WireFormatError gets out
            raise WireFormatError(f"invalid document ({type(e).__name__}: {e})") from None
        tensors = build(dag)
        try:
            func = te.create_prim_func(tensors)
        except Exception as e:
            first = (str(e).strip().splitlines() or [""])[0]
            raise WireFormatError(
                f"TVM could not create a PrimFunc ({type(e).__name__}: {first[:300]})"
            ) from None
        key = workload_key(func)
        return cls(name=dag.name or key, dag=dag, tensors=tensors, prim_func=func, key=key)

    @classmethod
    def from_tensors(cls, tensors: list[te.Tensor], name: str | None = None) -> Workload:
        """Serialize then ``from_json``: the same path a server takes, so both get one key."""
        return cls.from_json(serialize(tensors, name))

    def to_json(self) -> dict[str, Any]:
        return self.dag.model_dump(mode="json", exclude_none=True)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Workload) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"Workload(name={self.name!r}, key={self.key!r}, stages={len(self.dag.stages)})"


def load_workload(path: str | os.PathLike[str]) -> Workload:
    """Read a wire document from a JSON file (refusing files over ``max_json_bytes`` unread)."""
    limit = get_settings().max_json_bytes
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise WireFormatError(f"cannot read {os.fspath(path)!r}: {e.strerror or e}") from None
    if len(data) > limit:
        raise WireFormatError(f"{os.fspath(path)!r} is over max_json_bytes={limit}")
    return Workload.from_json(data)
