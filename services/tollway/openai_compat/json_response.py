"""A JSON response encoded by orjson: what every surface answers with.

Starlette's ``JSONResponse`` encodes with the standard library, which cost a whole answer as much as
the rest of the surface's own work. orjson writes the same compact JSON (UTF-8, no spaces); the
standard library's encoder takes only what orjson refuses (an integer beyond 64 bits in a tool
call's arguments).
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from tollway.openai_compat.translate import json_bytes

__all__ = ["JsonResponse"]


class JsonResponse(Response):
    """``starlette.responses.JSONResponse``, encoded by :func:`translate.json_bytes`."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return json_bytes(content)
