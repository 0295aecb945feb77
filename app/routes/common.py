"""Small helpers the upload routes share."""

from __future__ import annotations

import asyncio
from typing import TypeVar

from fastapi import Request

from model.decoding import DecodeOptions

from ..config import Settings
from ..errors import ApiError

T = TypeVar("T")
BINARY = {"schema": {"type": "string", "format": "binary"}}


def form_int(fields: dict[str, str], name: str) -> int | None:
    """An integer multipart field, or None when absent; 422 when it is not an integer."""
    raw = fields.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ApiError(422, f"{name}: must be an integer, got {raw!r}") from None


TRUE, FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def form_bool(fields: dict[str, str], name: str) -> bool | None:
    """A boolean multipart field, or None when absent; 422 when it is not a boolean."""
    raw = fields.get(name)
    if raw is None or raw.strip() == "":
        return None
    value = raw.strip().lower()
    if value not in TRUE | FALSE:
        raise ApiError(422, f"{name}: must be true or false, got {raw!r}")
    return value in TRUE


def first_given(*values: T | None) -> T | None:
    """The first value that is not None (a form field wins over the query string)."""
    return next((v for v in values if v is not None), None)


def decode_options(settings: Settings, beam_size: int | None, n_best: int | None) -> DecodeOptions:
    """The request's options, checked against the server's limits (422 otherwise)."""
    beam = settings.default_beam_size if beam_size is None else beam_size
    if not 1 <= beam <= settings.max_beam_size:
        raise ApiError(422, f"beam_size: must be between 1 and {settings.max_beam_size}, got {beam}")
    try:
        return settings.decoding(beam, 1 if n_best is None else n_best)
    except ValueError as e:
        raise ApiError(422, str(e)) from e


async def disconnected(request: Request) -> None:
    """Returns when the client closes its connection (call only once the body has been read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
        await asyncio.sleep(0.05)  # a stray empty body message: keep listening without spinning
