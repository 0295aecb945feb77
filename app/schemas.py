"""Request and response bodies, declared so that the OpenAPI page documents the API as it really is."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from model.resample import SAMPLE_RATES

# ---------------------------------------------------------------------------- native API


class Alternative(BaseModel):
    text: str
    score: float


class Word(BaseModel):
    word: str
    start: float = Field(description="seconds from the start of the audio (from the CTC alignment)")
    end: float


class Segment(BaseModel):
    start: float = Field(description="seconds from the start of the audio")
    end: float
    text: str
    n_best: list[Alternative] | None = Field(None, description="present when n_best > 1 was asked for")
    words: list[Word] | None = Field(None, description="present when word_timestamps=true was asked for")


class Timings(BaseModel):
    queue_ms: float = Field(description="longest time any of its segments waited for a batch")
    compute_ms: float = Field(description="model time of the batches that held its segments")
    preprocess_ms: float = Field(description="decoding, resampling and voice activity detection")


class TranscriptionResponse(BaseModel):
    text: str = Field(description="segment texts joined by spaces; empty when no speech was found")
    segments: list[Segment] = Field(description="[] when the audio holds no speech")
    duration: float = Field(description="seconds of audio received")
    model: str
    timings: Timings


class ErrorResponse(BaseModel):
    detail: str


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "loading", "failed", "stopping"]
    model: str | None = None
    detail: str | None = None


# ---------------------------------------------------------------------------- OpenAI-compatible API

ResponseFormat = Literal["json", "text", "verbose_json", "srt", "vtt"]


class OpenAITranscriptionForm(BaseModel):
    """The multipart fields of ``POST /v1/audio/transcriptions`` besides ``file``."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    model: str | None = Field(None, description="accepted for compatibility; the loaded model always answers")
    language: str | None = Field(None, description="accepted; the model is English-only")
    prompt: str | None = Field(None, description="accepted and ignored: this model takes no text prompt")
    response_format: ResponseFormat = "json"
    temperature: float = Field(0.0, ge=0.0, le=1.0, description="accepted and ignored: decoding is beam search")
    beam_size: int | None = Field(None, ge=1, description="extension: beam width (default from settings)")
    timestamp_granularities: list[Literal["word", "segment"]] = Field(
        default_factory=lambda: ["segment"], alias="timestamp_granularities[]",
        description="verbose_json only: 'word' adds word timings, 'segment' (the default) segment timings")
    stream: bool = Field(False, description="server-sent events: a transcript.text.delta per decoded segment, then "
                                            "transcript.text.done (response_format json or text only)")


class OpenAIUploadSchema(OpenAITranscriptionForm):
    """For the OpenAPI page only: the form including the file part."""

    file: bytes = Field(json_schema_extra={"format": "binary"})


class OpenAITranscription(BaseModel):
    text: str


class OpenAISegment(BaseModel):
    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int] = Field(default_factory=list)
    temperature: float = 0.0
    avg_logprob: float
    compression_ratio: float = 1.0
    no_speech_prob: float = 0.0


class OpenAIVerboseTranscription(BaseModel):
    task: Literal["transcribe"] = "transcribe"
    language: str = "english"
    duration: float
    text: str
    segments: list[OpenAISegment]
    words: list[Word] | None = None


class OpenAIModel(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "speech-transformer"


class OpenAIModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIModel]


# ---------------------------------------------------------------------------- WebSocket streaming


class StreamConfigMessage(BaseModel):
    """The optional first text message of a stream; every field has a default."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["config"]
    sample_rate: int = Field(16000, ge=SAMPLE_RATES[0], le=SAMPLE_RATES[1], description="of the binary frames that follow")
    encoding: str = Field("pcm_s16le", description="pcm_s16le (16-bit little-endian), f32le (32-bit float), or "
                          "mulaw / alaw (8-bit G.711, one byte a sample: telephony, usually at 8000 Hz)")
    beam_size: int | None = Field(None, ge=1, description="beam width of finals (default ASR_DEFAULT_BEAM_SIZE)")
    word_timestamps: bool = Field(False, description="finals carry 'words': [{word, start, end}]")
