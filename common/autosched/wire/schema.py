"""The JSON Schema of the wire format, generated from the models.

Regenerate the published copy after changing ``models.py``::

    python -m autosched.wire.schema          # rewrites common/autosched/wire/schema.json
    python -m autosched.wire.schema --check  # exit 1 if it is out of date
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from autosched import WIRE_FORMAT_VERSION
from autosched.wire.models import ComputeDAG

SCHEMA_PATH = Path(__file__).with_name("schema.json")


def json_schema() -> dict[str, Any]:
    schema = ComputeDAG.model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "description": (
            f"autosched wire format version {WIRE_FORMAT_VERSION}: a DAG of tensor-expression "
            "stages (see docs/wire-format.md). Semantic rules (scoping, dtypes, limits) are "
            "checked by the server beyond this schema."
        ),
        **schema,
    }


def render() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        current = SCHEMA_PATH.read_text() if SCHEMA_PATH.exists() else ""
        if current != text:
            print(f"{SCHEMA_PATH} is out of date; run python -m autosched.wire.schema")
            return 1
        return 0
    SCHEMA_PATH.write_text(text)
    print(f"wrote {SCHEMA_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
