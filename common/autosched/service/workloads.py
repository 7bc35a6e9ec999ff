"""Workloads: validated, built in a sandbox, stored once per key; templates per target.

A client's document, if small, is checked in-process by the pure-Python validator (refusing
obvious garbage without a round trip), then validated again and built into its key, analysis
and template by ``workload_sandbox`` in a separate process with a time limit: the API never
builds a TVM object from request data. ``template_row`` is the one way a TemplateRow is
made; its caller says how the template gets built (sandboxed for documents from requests,
in-process for workloads already stored and validated, in processes that serve no requests).
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import islice
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from autosched.db.models import TemplateRow, WorkloadRow
from autosched.errors import NotFoundError
from autosched.hardware import HardwareParams
from autosched.schemas import StageView, WorkloadView
from autosched.service import workload_sandbox
from autosched.service.workload_sandbox import BuiltTemplate, WorkloadFacts
from autosched.wire import Workload
from autosched.wire.validate import validate_document

# Builds the template of one workload for one hardware (see ``sandboxed``/``in_process``).
TemplateBuilder = Callable[[HardwareParams], BuiltTemplate]


# Documents of up to this many JSON values are validated here too, so that obvious garbage
# is refused without a sandbox round trip. Validation is pure Python, ~6 us per value (a
# 0.5 MB tree of adds: 260 ms), and holds the GIL meanwhile: with a few clients posting large
# documents, health probes of this process waited ~0.4 s (p50) where they took 5 ms with
# the validation in the sandbox. Larger documents are validated there only.
IN_PROCESS_VALIDATION_VALUES = 1000


def check_document(doc: dict[str, Any]) -> None:
    """The cheap checks, in-process: the three validation passes (no TVM object) for small
    documents. The sandbox validates every document again, with the same settings."""
    if _at_most(doc, IN_PROCESS_VALIDATION_VALUES):
        validate_document(doc)


def _at_most(doc: Any, values: int) -> bool:
    """Whether ``doc`` holds at most ``values`` JSON values; stops counting past that, so it
    costs little whatever the size (the body limit bounds that)."""
    stack = [doc]
    seen = 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > values:
            return False
        if isinstance(node, dict):
            stack.extend(islice(node.values(), values))
        elif isinstance(node, list):
            stack.extend(islice(node, values))
    return True


def sandboxed(wire: dict[str, Any]) -> TemplateBuilder:
    """Build in a sandbox process: for any document that came from a request."""
    return lambda hw: workload_sandbox.describe(wire, [hw]).targets[0]


def in_process(workload: Workload) -> TemplateBuilder:
    """Build in this process: only for a stored (validated) workload, outside the API."""
    return lambda hw: workload_sandbox.build_target(workload, hw)


def template_row(
    session: Session, workload_key: str, hw: HardwareParams, build: TemplateBuilder
) -> TemplateRow:
    """The template of a stored workload for ``hw``'s target key; built and stored once."""

    target = hw.target_key
    row = find_template(session, workload_key, target)
    if row is not None:
        return row
    built = build(hw)
    if built.target_key != target:  # a builder for other hardware: a bug, not bad input
        raise RuntimeError(f"built a template for {built.target_key}, wanted {target}")
    row = TemplateRow(
        workload_key=workload_key,
        target_key=target,
        template=built.template,
        hardware=built.hardware,
        static_config=built.static_config,
    )
    session.add(row)
    session.flush()
    return row


def find_template(session: Session, workload_key: str, target: str) -> TemplateRow | None:
    return session.scalars(
        select(TemplateRow).where(
            TemplateRow.workload_key == workload_key, TemplateRow.target_key == target
        )
    ).one_or_none()


def ensure_template(session: Session, workload: Workload, hw: HardwareParams) -> TemplateRow:
    """``template_row`` built in-process, for trusted callers that hold a ``Workload``."""
    return template_row(session, workload.key, hw, in_process(workload))


def store_facts(session: Session, facts: WorkloadFacts) -> tuple[WorkloadRow, bool]:
    """The stored row for the workload ``facts`` describe (created if new); second value:
    whether it was new."""
    row = session.get(WorkloadRow, facts.key)
    if row is not None:
        return row, False
    row = WorkloadRow(
        key=facts.key,
        name=facts.name,
        wire=facts.wire,
        flops=facts.flops,
        analysis=facts.stages,
    )
    session.add(row)
    session.flush()
    return row, True


def store_workload(session: Session, workload: Workload) -> tuple[WorkloadRow, bool]:
    """``store_facts`` for a ``Workload`` built in this process (trusted callers)."""
    return store_facts(session, workload_sandbox.describe_workload(workload, []))


def get_workload_row(session: Session, key: str) -> WorkloadRow:
    row = session.get(WorkloadRow, key)
    if row is None:
        raise NotFoundError(f"no workload with key {key!r}")
    return row


def load_stored(row: WorkloadRow) -> Workload:
    """Rebuild the Workload of a stored row (it was validated when stored)."""
    return Workload.from_json(row.wire)


def register_workload(session: Session, doc: dict[str, Any], hw: HardwareParams) -> WorkloadView:
    """``POST /v1/workloads``: validate, build in a sandbox, store once, and describe it for
    ``hw``'s target. ``WireFormatError`` (nothing stored) for a refused declaration."""
    check_document(doc)
    facts = workload_sandbox.describe(doc, [hw])
    row, created = store_facts(session, facts)
    template = template_row(session, row.key, hw, lambda _hw: facts.targets[0])
    return _view(row, template, created)


def workload_view(session: Session, key: str, hw: HardwareParams) -> WorkloadView:
    """``GET /v1/workloads/{key}``: the stored workload with its template for ``hw``."""
    row = get_workload_row(session, key)
    return _view(row, template_row(session, key, hw, sandboxed(row.wire)), created=False)


def _view(row: WorkloadRow, template: TemplateRow, created: bool) -> WorkloadView:
    return WorkloadView(
        key=row.key,
        name=row.name,
        flops=row.flops,
        stages=[StageView.model_validate(s) for s in row.analysis],
        template=template.template,
        target_key=template.target_key,
        created=created,
    )
