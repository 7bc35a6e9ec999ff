"""A schedule trace's JSON as Python-like lines, for people: the dashboard and the CLI.

Plain JSON in, strings out: no TVM, so the API process and the client both use it.
"""

from __future__ import annotations

import json
import re
from typing import Any


def format_trace(trace: Any) -> list[str]:
    """A schedule trace's JSON as one Python-like line per instruction.

    TVM prints a trace as Python only from a live Schedule; from JSON we render each
    instruction as ``outputs = sch.kind(inputs, attrs)``, with sampling decisions as comments.
    Accepts TVM's ``[instructions, decisions]`` or an object holding them (``insts``).
    """
    if isinstance(trace, dict):
        if "insts" in trace:
            insts, decisions = trace["insts"], trace.get("decisions", [])
        else:
            lists = [v for v in trace.values() if isinstance(v, list)]
            return format_trace(lists[0]) if len(lists) == 1 else [json.dumps(trace)]
    elif isinstance(trace, list) and trace and isinstance(trace[0], list):
        insts, decisions = trace[0], trace[1] if len(trace) > 1 else []
    else:
        return [json.dumps(trace)] if trace else []
    decided = {d[0]: d[1] for d in decisions if isinstance(d, list) and len(d) == 2}
    lines = []
    for index, inst in enumerate(insts):
        if not (isinstance(inst, list) and len(inst) == 4):
            lines.append(json.dumps(inst))
            continue
        kind, inputs, attrs, outputs = inst
        name = re.sub(r"(?<=[a-z])(?=[A-Z])", "_", str(kind)).lower()
        args = ", ".join([*(_ref(x) for x in inputs), *(_literal(a) for a in attrs)])
        line = f"sch.{name}({args})"
        if outputs:
            line = f"{', '.join(map(str, outputs))} = {line}"
        if index in decided:
            line += f"  # decision: {_literal(decided[index])}"
        lines.append(line)
    return lines


def _ref(value: Any) -> str:
    """An instruction input: names (b0, l3) print bare; serialized objects by their type."""
    if isinstance(value, list):
        return f"[{', '.join(_ref(v) for v in value)}]"
    if isinstance(value, str) and value.startswith("{"):
        try:
            doc = json.loads(value)
            return f"<{doc['nodes'][doc['root_index']]['type']}>"
        except (ValueError, KeyError, IndexError, TypeError):
            return repr(value[:40] + "...")
    return str(value)


def _literal(value: Any) -> str:
    if isinstance(value, list):
        return f"[{', '.join(_literal(v) for v in value)}]"
    return repr(value) if isinstance(value, str | bool | type(None)) else str(value)
