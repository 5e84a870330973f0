"""The browser console (``services/tollway/web/``) served by Envoy itself under ``/ui/``.

Each file becomes one route with a ``direct_response`` read from the file when Envoy loads
its configuration: no file server process, and the console shares the API's origin, so its
``fetch`` calls need no CORS. A file added or changed needs a new Envoy configuration (as a
new proto does). Files that do not exist when the configuration is made are not served, so a
checkout without the vendored chart library (``scripts/vendor_web.sh``) serves the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

WEB_ROOT = Path(__file__).resolve().parents[1] / "web"
PREFIX = "/ui/"
# Envoy refuses a direct_response body above the route table's limit (4 KiB by default); the
# largest console file is the chart library (~210 KB).
MAX_BODY_BYTES = 1 << 20
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
}
# The console loads only its own files: no inline script, nothing from another origin.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'"
)


def console_files(root: Path = WEB_ROOT) -> list[Path]:
    """The files to serve, sorted; only types the table above knows, and none over the limit."""
    if not root.is_dir():
        return []
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and p.suffix in _TYPES and p.stat().st_size <= MAX_BODY_BYTES
    )


def console_routes(per_filter: dict[str, Any], root: Path = WEB_ROOT) -> list[dict[str, Any]]:
    """Routes for ``/ui`` (a redirect), ``/ui/`` (index.html) and every file under ``root``.

    Args:
        per_filter: Per-route filter configs (the transcoder disabled: these are not API paths).
        root: The console's directory.
    """
    files = console_files(root)
    if not files:
        return []
    routes: list[dict[str, Any]] = [
        {
            "name": "console:redirect",
            "match": {"path": PREFIX.rstrip("/")},
            "redirect": {"path_redirect": PREFIX},
            "typed_per_filter_config": per_filter,
        },
    ]
    for path in files:
        relative = path.relative_to(root).as_posix()
        paths = [PREFIX + relative] + ([PREFIX] if relative == "index.html" else [])
        for served in paths:
            routes.append({
                "name": f"console:{served}",
                "match": {"path": served},
                "direct_response": {"status": 200, "body": {"filename": str(path)}},
                "response_headers_to_add": [
                    _header("content-type", _TYPES[path.suffix]),
                    _header("cache-control", "no-cache"),
                    _header("x-content-type-options", "nosniff"),
                    _header("content-security-policy", _CSP),
                ],
                "typed_per_filter_config": per_filter,
            })
    return routes


def _header(name: str, value: str) -> dict[str, Any]:
    return {"header": {"key": name, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
