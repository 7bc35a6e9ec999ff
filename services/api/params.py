"""Path and query parameters the routes share, bounded by the schemas' own types: a value
outside them is a 422 that names the parameter, never a database error."""

from __future__ import annotations

from typing import Annotated

from fastapi import Header, Path, Query

from autosched.schemas import RowId, TargetKey, WorkerId, WorkloadKey

#: Jobs and tokens: 32-bit row ids.
RowIdPath = Annotated[RowId, Path()]
WorkloadKeyPath = Annotated[WorkloadKey, Path()]
WorkerIdPath = Annotated[WorkerId, Path()]
WorkloadKeyQuery = Annotated[WorkloadKey | None, Query()]
#: A target key (``llvm/<mcpu>/<cores>c/<bits>b``).
TargetKeyQuery = Annotated[TargetKey | None, Query()]
#: A conditional GET's ETags; a list of a few, so bounded well above any real one.
IfNoneMatchHeader = Annotated[str | None, Header(max_length=2048)]
