"""Reading an upload (multipart ``file`` or a raw audio body) without ever holding more than the limit.

The size limit is enforced as the bytes arrive: a declared ``Content-Length`` over it is refused before any
body is read, and a chunked body is cut off as soon as it passes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from .errors import ApiError


@dataclass
class Upload:
    audio: bytes
    fields: dict[str, str] = field(default_factory=dict)  # the last value of each field
    filename: str | None = None
    lists: dict[str, list[str]] = field(default_factory=dict)  # every value, for repeated fields (``name[]``)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"the upload is over the {limit}-byte limit")


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "invalid Content-Length header")
        if int(declared) > limit:
            raise _too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def _once(body: bytes):  # the parser wants an async stream of chunks
    yield body


async def read_upload(request: Request, limit: int) -> Upload:
    """The audio bytes and, for multipart bodies, the other form fields as strings."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await read_body(request, limit)
    if content_type == "application/x-www-form-urlencoded":
        raise ApiError(415, "send the audio as multipart/form-data (field 'file') or as the raw request body")
    if content_type != "multipart/form-data":
        return Upload(body)
    try:
        form = await MultiPartParser(request.headers, _once(body), max_files=1, max_fields=32,
                                     max_part_size=64 * 1024).parse()
    except MultiPartException as e:
        raise ApiError(400, f"malformed multipart body: {e.message}") from e
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise ApiError(400, "the multipart body needs a 'file' part holding the audio")
    try:
        audio = await upload.read()
    finally:
        await form.close()
    lists: dict[str, list[str]] = {}
    for k, v in form.multi_items():
        if isinstance(v, str):
            lists.setdefault(k, []).append(v)
    return Upload(audio, {k: v[-1] for k, v in lists.items()}, upload.filename, lists)
