"""``POST /transcribe``: the native REST API."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from ..errors import ApiError
from ..observability import request_id
from ..schemas import Alternative, ErrorResponse, Segment, Timings, TranscriptionResponse, Word
from ..security import require_api_key
from ..state import ServiceState, require_ready
from ..uploads import read_upload
from .common import BINARY, decode_options, disconnected, first_given, form_bool, form_int

router = APIRouter(tags=["transcription"], dependencies=[Depends(require_api_key)])

ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 413, 415, 422, 429, 503)}
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {
                "type": "object", "required": ["file"],
                "properties": {"file": {"type": "string", "format": "binary"},
                               "beam_size": {"type": "integer", "minimum": 1},
                               "n_best": {"type": "integer", "minimum": 1},
                               "word_timestamps": {"type": "boolean"}}}},
            "audio/*": BINARY,
            "application/octet-stream": BINARY,
        },
    }
}


@router.post("/transcribe", response_model=TranscriptionResponse, response_model_exclude_none=True,
             responses=ERRORS, openapi_extra=UPLOAD_BODY,
             summary="Transcribe one upload (WAV, FLAC, OGG/Vorbis or MP3; any rate, any channel count)")
async def transcribe(
    request: Request,
    state: Annotated[ServiceState, Depends(require_ready)],
    beam_size: Annotated[int | None, Query(ge=1, description="beam width (default ASR_DEFAULT_BEAM_SIZE)")] = None,
    n_best: Annotated[int | None, Query(ge=1, description="alternatives per segment, at most beam_size")] = None,
    word_timestamps: Annotated[bool | None, Query(description="add each segment's words with their times")] = None,
) -> TranscriptionResponse:
    state.transcriber.check_capacity()
    upload = await read_upload(request, state.settings.max_upload_bytes)
    if not upload.audio:
        raise ApiError(400, "empty file")
    options = decode_options(state.settings, first_given(form_int(upload.fields, "beam_size"), beam_size),
                             first_given(form_int(upload.fields, "n_best"), n_best))
    with_words = first_given(form_bool(upload.fields, "word_timestamps"), word_timestamps) or False
    result = await state.transcriber.transcribe(upload.audio, options, request_id=request_id.get(),
                                                disconnected=lambda: disconnected(request))
    segments = [
        Segment(start=s.start, end=s.end, text=s.text,
                n_best=[Alternative(text=a.text, score=a.score) for a in s.n_best] if options.n_best > 1 else None,
                words=[Word(word=w.word, start=w.start, end=w.end) for w in s.words] if with_words else None)
        for s in result.segments
    ]
    return TranscriptionResponse(
        text=result.text, segments=segments, duration=round(result.duration, 3), model=state.worker.name,
        timings=Timings(queue_ms=round(result.queue_ms, 1), compute_ms=round(result.compute_ms, 1),
                        preprocess_ms=round(result.preprocess_ms, 1)),
    )
