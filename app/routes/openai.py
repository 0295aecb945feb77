"""The OpenAI-compatible subset: ``POST /v1/audio/transcriptions`` and ``GET /v1/models``.

The official ``openai`` client works unchanged with ``base_url="http://HOST:PORT/v1"``. Parameters this model
cannot honour (``prompt``, ``temperature``, a language other than English) are accepted, logged, and listed in
the ``X-Ignored-Parameters`` response header.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import ValidationError

from ..errors import OPENAI_TYPES, ApiError
from ..formats import to_srt, to_text, to_vtt
from ..observability import request_id
from ..schemas import (
    ErrorResponse,
    OpenAIModel,
    OpenAIModelList,
    OpenAISegment,
    OpenAITranscription,
    OpenAITranscriptionForm,
    OpenAIUploadSchema,
    OpenAIVerboseTranscription,
    Word,
)
from ..security import require_api_key
from ..state import ServiceState, require_ready, service_state
from ..transcriber import SegmentText, Transcript
from ..uploads import Upload, read_upload
from .common import decode_options, disconnected

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[Depends(require_api_key)])
ENGLISH = {"en", "english", "en-us", "en-gb"}
STREAMABLE = {"json", "text"}
UPLOAD_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": OpenAIUploadSchema.model_json_schema()}}}}


GRANULARITIES = ("timestamp_granularities[]", "timestamp_granularities")


def _parse_form(upload: Upload) -> OpenAITranscriptionForm:
    values: dict[str, object] = {k: v for k, v in upload.fields.items() if v != ""}
    for name in GRANULARITIES:  # a repeated field: every value counts
        if name in upload.lists:
            values[name] = [v for v in upload.lists[name] if v != ""]
    try:
        return OpenAITranscriptionForm.model_validate(values)
    except ValidationError as e:
        msg = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise ApiError(400, msg) from e


def _ignored(form: OpenAITranscriptionForm) -> list[str]:
    ignored = []
    if form.prompt:
        ignored.append("prompt")
    if form.temperature:
        ignored.append("temperature")
    if form.language and form.language.lower() not in ENGLISH:
        ignored.append("language")
    if "word" in form.timestamp_granularities and form.response_format != "verbose_json":
        ignored.append("timestamp_granularities")  # as OpenAI: timings need verbose_json
    return ignored


def _sse(event: dict) -> bytes:
    return f"data: {json.dumps(event)}\n\n".encode()


async def _events(segments: AsyncIterator[SegmentText]) -> AsyncIterator[bytes]:
    """OpenAI's transcription events: a ``transcript.text.delta`` per decoded segment with text, then
    ``transcript.text.done`` with the whole text; a failure after the answer has begun becomes an ``error`` event."""
    text = ""
    try:
        async for segment in segments:
            if segment.text:
                delta = f" {segment.text}" if text else segment.text
                text += delta
                yield _sse({"type": "transcript.text.delta", "delta": delta})
    except ApiError as e:
        log.warning("streamed transcription failed: %s", e.message)
        yield _sse({"type": "error", "error": {"message": e.message, "type": OPENAI_TYPES.get(e.status, "server_error"),
                                               "param": None, "code": e.status}})
        return
    yield _sse({"type": "transcript.text.done", "text": text})


def _render(form: OpenAITranscriptionForm, result: Transcript) -> Response:
    if form.response_format == "text":
        return PlainTextResponse(to_text(result.text))
    if form.response_format == "srt":
        return PlainTextResponse(to_srt(result.segments), media_type="application/x-subrip")
    if form.response_format == "vtt":
        return PlainTextResponse(to_vtt(result.segments), media_type="text/vtt")
    if form.response_format == "verbose_json":
        segments = [OpenAISegment(id=i, seek=0, start=s.start, end=s.end, text=s.text, avg_logprob=s.score)
                    for i, s in enumerate(result.segments)]
        words = ([Word(word=w.word, start=w.start, end=w.end) for s in result.segments for w in s.words]
                 if "word" in form.timestamp_granularities else None)
        body = OpenAIVerboseTranscription(duration=round(result.duration, 3), text=result.text, segments=segments,
                                          words=words)
        return JSONResponse(body.model_dump(exclude_none=True))
    return JSONResponse(OpenAITranscription(text=result.text).model_dump())


@router.post("/audio/transcriptions", openapi_extra=UPLOAD_BODY,
             responses={200: {"model": OpenAIVerboseTranscription,
                              "description": "JSON (json, verbose_json) or text (text, srt, vtt)"},
                        **{code: {"model": ErrorResponse} for code in (400, 401, 413, 422, 429, 503)}},
             summary="OpenAI-compatible transcription (multipart: file, model, language, prompt, "
                     "response_format, temperature)")
async def transcriptions(request: Request, state: Annotated[ServiceState, Depends(require_ready)]) -> Response:
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "multipart/form-data":
        raise ApiError(400, "send multipart/form-data with the audio in a 'file' part")
    state.transcriber.check_capacity()
    upload = await read_upload(request, state.settings.max_upload_bytes)
    if not upload.audio:
        raise ApiError(400, "empty file")
    form = _parse_form(upload)
    if form.stream and form.response_format not in STREAMABLE:
        raise ApiError(400, f"stream=true sends text events; response_format {form.response_format!r} cannot be "
                            f"streamed (use json or text, or stream=false)")
    options = decode_options(state.settings, form.beam_size, None)
    ignored = _ignored(form)
    if ignored:
        log.info("ignoring parameters this model cannot honour: %s", ", ".join(ignored))
    if form.stream:
        segments = await state.transcriber.stream(upload.audio, options, request_id=request_id.get())
        response: Response = StreamingResponse(_events(segments), media_type="text/event-stream",
                                               headers={"Cache-Control": "no-cache"})
    else:
        result = await state.transcriber.transcribe(upload.audio, options, request_id=request_id.get(),
                                                    disconnected=lambda: disconnected(request))
        response = _render(form, result)
    if ignored:
        response.headers["X-Ignored-Parameters"] = ", ".join(ignored)
    return response


def _card(state: ServiceState) -> OpenAIModel:
    return OpenAIModel(id=state.worker.name, created=state.created)


@router.get("/models", response_model=OpenAIModelList, summary="The loaded model")
async def list_models(request: Request) -> OpenAIModelList:
    state = service_state(request)
    return OpenAIModelList(data=[_card(state)] if state.worker else [])


@router.get("/models/{model_id}", response_model=OpenAIModel, responses={404: {"model": ErrorResponse}})
async def get_model(model_id: str, request: Request) -> OpenAIModel:
    state = service_state(request)
    if state.worker is None or model_id != state.worker.name:
        raise ApiError(404, f"no model {model_id!r}; this server serves {state.worker.name if state.worker else 'none yet'}")
    return _card(state)
