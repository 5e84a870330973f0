"""What every HTTP surface does with a request before translating it: the body and the key."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from tollway.mesh.errors import InvalidArgument
from tollway.openai_compat import translate
from tollway.openai_compat.errors import ApiError, bad_json, from_invalid, too_large

# A client's per-request model-fallback policy, passed on to the gateway (and so the router).
ALLOW_FALLBACK = "x-tollway-allow-fallback"


async def json_body(request: Request, max_body_bytes: int) -> Any:
    """The request's JSON body.

    Raises:
        ApiError: 413 above the limit, 400 for a body that is not strict JSON.
    """
    raw = await request.body()
    if len(raw) > max_body_bytes:
        raise too_large(len(raw), max_body_bytes)
    try:
        return translate.parse_body(raw)
    except ValueError as exc:
        raise bad_json(exc) from None


def metadata(request: Request, *, api_key_header: bool = False) -> list[tuple[str, str]]:
    """The gRPC metadata of the gateway call: the key, and the fallback policy.

    With ``api_key_header`` (Anthropic's SDK), ``x-api-key: K`` is accepted as well as
    ``authorization: Bearer K``; the gateway reads the bearer form.

    Raises:
        ApiError: 400 when a header Tollway reads is not printable ASCII.
    """
    try:
        translate.check_headers(request.headers.raw)
    except InvalidArgument as exc:
        raise from_invalid(exc) from None
    if api_key_header:
        check_api_key_ascii(request)
    auth = request.headers.get("authorization")
    if not auth and api_key_header:
        key = request.headers.get("x-api-key")
        auth = f"Bearer {key}" if key else None
    out = [("authorization", auth)] if auth else []
    allow = request.headers.get(ALLOW_FALLBACK)
    if allow is not None:
        out.append((ALLOW_FALLBACK, allow))
    return out


def check_api_key_ascii(request: Request) -> None:
    """Refuses an ``x-api-key`` that gRPC metadata could not carry (never repeating it).

    Raises:
        ApiError: 400 naming the header.
    """
    key = request.headers.get("x-api-key")
    if key is not None and not (key.isascii() and key.isprintable()):
        raise ApiError(400, "the x-api-key header must be printable ASCII", "invalid_request_error", None, "x-api-key")
