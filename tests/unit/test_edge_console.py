"""The console's Envoy routes: one direct_response per file under /ui/, nothing without files."""

from __future__ import annotations

from pathlib import Path

from tollway.edge.console import MAX_BODY_BYTES, console_routes

OFF = {"envoy.filters.http.grpc_json_transcoder": {"disabled": True}}


def test_every_file_gets_a_route_and_index_html_also_serves_the_prefix(tmp_path: Path) -> None:
    (tmp_path / "vendor").mkdir()
    (tmp_path / "index.html").write_text("<!doctype html>")
    (tmp_path / "app.js").write_text("init();")
    (tmp_path / "vendor" / "chart.umd.min.js").write_text("/* chart */")
    (tmp_path / "notes.md").write_text("not a type the console serves")
    (tmp_path / "huge.js").write_bytes(b"x" * (MAX_BODY_BYTES + 1))
    routes = {r["match"]["path"]: r for r in console_routes(OFF, tmp_path)}
    assert set(routes) == {"/ui", "/ui/", "/ui/index.html", "/ui/app.js", "/ui/vendor/chart.umd.min.js"}
    assert routes["/ui"]["redirect"] == {"path_redirect": "/ui/"}
    index = routes["/ui/"]
    assert index["direct_response"] == {"status": 200, "body": {"filename": str(tmp_path / "index.html")}}
    headers = {h["header"]["key"]: h["header"]["value"] for h in routes["/ui/app.js"]["response_headers_to_add"]}
    assert headers["content-type"].startswith("text/javascript")
    assert "script-src 'self'" in headers["content-security-policy"]
    # Not API paths: the transcoder must not answer 404 for them.
    assert all(r["typed_per_filter_config"] == OFF for r in routes.values())


def test_no_files_no_routes(tmp_path: Path) -> None:
    assert console_routes(OFF, tmp_path / "missing") == []
    assert console_routes(OFF, tmp_path) == []
