"""``/v1/workloads``: submit a compute declaration (wire format), read a stored one."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Response, status

from autosched.schemas import ErrorBody, WorkloadView
from autosched.service.workloads import register_workload, workload_view
from services.api.deps import HostHardwareDep, ReadAccess, SessionDep, SubmitAccess
from services.api.params import WorkloadKeyPath

router = APIRouter(prefix="/v1/workloads", tags=["workloads"])


@router.post(
    "",
    response_model=WorkloadView,
    status_code=status.HTTP_201_CREATED,
    dependencies=[SubmitAccess],
    responses={
        200: {"model": WorkloadView, "description": "already stored (`created` is false)"},
        413: {"model": ErrorBody, "description": "body over max_json_bytes"},
        409: {"model": ErrorBody, "description": "template builders busy; retry"},
        422: {"description": "malformed, refused, crashing or too slow to analyse; `path`"},
    },
)
def submit_workload(
    doc: Annotated[dict[str, Any], Body(description="a wire-format compute declaration")],
    session: SessionDep,
    hw: HostHardwareDep,
    response: Response,
) -> WorkloadView:
    """Validate, build in a sandbox (at most ``template_timeout_s``) and store once per key;
    the template is for the API host's target."""
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
def get_workload(key: WorkloadKeyPath, session: SessionDep, hw: HostHardwareDep) -> WorkloadView:
    """The stored workload with its template for the API host's target."""
    return workload_view(session, key, hw)
