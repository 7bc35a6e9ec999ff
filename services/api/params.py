"""Path and query parameters the routes share, bounded by the schemas' own types: a value
outside them is a 422 that names the parameter, never a database error."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

from autosched.schemas import RowId, TargetKey, WorkerId, WorkloadKey

#: Jobs and tokens: 32-bit row ids.
RowIdPath = Annotated[RowId, Path()]
WorkloadKeyPath = Annotated[WorkloadKey, Path()]
WorkerIdPath = Annotated[WorkerId, Path()]
WorkloadKeyQuery = Annotated[WorkloadKey | None, Query()]
#: A target key (``llvm/<mcpu>/<cores>c/<bits>b``).
TargetKeyQuery = Annotated[TargetKey | None, Query()]
