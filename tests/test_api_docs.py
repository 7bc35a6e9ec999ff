"""OpenAPI at /docs with no network: Swagger UI's files are served by the app itself."""

from __future__ import annotations

import re

from tests.api_support import api_client


def test_docs_page_loads_only_local_assets(sqlite_url, tmp_path):
    with api_client(sqlite_url, tmp_path) as client:
        page = client.get("/docs")
        assert page.status_code == 200
        assert "swagger-ui" in page.text and "/openapi.json" in page.text
        urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
        assert urls, page.text
        assert all(u.startswith("/") for u in urls), urls  # nothing from a CDN
        for url in urls:
            asset = client.get(url)
            assert asset.status_code == 200 and len(asset.content) > 500, url
        schema = client.get("/openapi.json").json()
        assert "/v1/jobs" in schema["paths"] and "/v1/schedules/lookup" in schema["paths"]


def test_readme_example_declaration_is_accepted(sqlite_url, tmp_path):
    """The hand-written declaration the README's curl loop sends."""
    from pathlib import Path

    body = (Path(__file__).parents[1] / "docs" / "examples" / "matmul_256.json").read_bytes()
    with api_client(sqlite_url, tmp_path, auth_required=False) as client:
        r = client.post("/v1/workloads", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 201, r.text
        assert [s["meta_template"] for s in r.json()["stages"]] == ["complex_reduction"]
