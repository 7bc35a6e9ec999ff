"""``/v1/workloads``: submit a compute declaration (wire format), read a stored one."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Response, status

from autosched.service.schemas import ErrorBody, WorkloadView
from autosched.service.workloads import get_workload_row, register_workload
from services.api.deps import HostHardwareDep, ReadAccess, SessionDep, SubmitAccess

router = APIRouter(prefix="/v1/workloads", tags=["workloads"])


@router.post(
    "",
    response_model=WorkloadView,
    status_code=status.HTTP_201_CREATED,
    dependencies=[SubmitAccess],
    responses={
        200: {"model": WorkloadView, "description": "already stored (`created` is false)"},
        413: {"model": ErrorBody, "description": "body over max_json_bytes"},
        422: {"description": "malformed document; `path` says where"},
    },
)
def submit_workload(
    doc: Annotated[dict[str, Any], Body(description="a wire-format compute declaration")],
    session: SessionDep,
    hw: HostHardwareDep,
    response: Response,
) -> WorkloadView:
    """Validate and store once per key; the template is for the API host's target."""
    view = register_workload(session, doc, hw)
    if not view.created:
        response.status_code = status.HTTP_200_OK
    return view


@router.get(
    "/{key}",
    response_model=WorkloadView,
    dependencies=[ReadAccess],
    responses={404: {"model": ErrorBody}},
)
def get_workload(key: str, session: SessionDep, hw: HostHardwareDep) -> WorkloadView:
    """The stored workload with its template for the API host's target."""
    return register_workload(session, get_workload_row(session, key).wire, hw)
