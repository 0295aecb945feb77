"""Every knob of the service, read once from ``ASR_*`` environment variables into one typed object."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from model.decoding import DecodeOptions

# The shipped checkpoint sits beside the packages, so `speech-transformer serve` works with no arguments.
DEFAULT_WEIGHTS = Path(__file__).resolve().parents[1] / "weights"


class Settings(BaseSettings):
    """Service settings; each field ``name`` is read from ``ASR_NAME`` (e.g. ``ASR_MAX_BATCH_SIZE=16``)."""

    model_config = SettingsConfigDict(env_prefix="ASR_", extra="ignore")

    # Model
    weights: Path = DEFAULT_WEIGHTS
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16", "int8"] = "auto"
    torch_threads: int | None = Field(None, ge=1, description="intra-op CPU threads (default: torch's choice)")

    # Dynamic batching
    max_batch_size: int = Field(16, ge=1, le=256)
    max_batch_audio_seconds: float = Field(160.0, gt=0, description="padded audio per batch: items x longest item")
    max_wait_ms: float = Field(20.0, ge=0, description="how long a batch waits for more work once it has one item")
    max_incoming_wait_ms: float = Field(250.0, ge=0, description="longer wait while uploads are still being decoded")
    idle_wait_ms: float = Field(2.0, ge=0, description="shorter wait when the engine is idle (no batch for "
                                                       "max_wait_ms and no upload being decoded)")
    queue_depth: int = Field(128, ge=1, description="pending segments before new requests get 429")
    retry_after_s: int = Field(1, ge=1)

    # Requests
    max_upload_bytes: int = Field(25 * 1024 * 1024, ge=1)
    max_audio_seconds: float = Field(600.0, gt=0, description="checked against the file's header, then while decoding")
    max_concurrent_decodes: int = Field(2, ge=1, description="uploads decoded from bytes at once; the rest wait")
    decode_wait_s: float = Field(10.0, gt=0, description="how long an upload waits for a decoding slot (429 after), "
                                                         "and a stream's final for room in the queue (1013 after)")
    default_beam_size: int = Field(DecodeOptions.beam_size, ge=1)
    max_beam_size: int = Field(32, ge=1)
    ctc_weight: float = Field(DecodeOptions.ctc_weight, ge=0, le=1,
                              description="weight of the CTC head in the joint score (0 = attention only)")
    ctc_mode: Literal["prefix", "rescore"] = Field(DecodeOptions.ctc_mode,
                                                   description="CTC prefix scores in every beam step, or only "
                                                               "re-ranking the finished n-best (cheaper)")
    lm_weight: float = Field(DecodeOptions.lm_weight, ge=0, le=1,
                             description="weight of the word language model (lm.arpa.xz/.gz beside the weights) when "
                                         "re-ranking the beam; 0 turns it off")
    lm_fusion_weight: float = Field(DecodeOptions.lm_fusion_weight, ge=0, le=1,
                                    description="weight of the word language model inside the beam search "
                                                "(shallow fusion at word boundaries); 0 turns it off")
    lm_fusion_bonus: float = Field(DecodeOptions.lm_fusion_bonus, ge=0, le=20,
                                   description="fusion: added to each completed word's LM log-probability")
    beam_margin: float = Field(DecodeOptions.beam_margin, ge=0,
                               description="beams trailing the best by more than this (joint log-score) are dropped "
                                           "for the step; 0 = always the full beam")
    end_margin: float = Field(DecodeOptions.end_margin, ge=0,
                              description="an utterance stops once its best live hypothesis trails its best "
                                          "finished one by this; 0 = only when a beam's worth has finished")
    vad_threshold: float = Field(0.5, gt=0, lt=1)

    # WebSocket streaming
    max_streams: int = Field(64, ge=1)
    stream_max_frame_bytes: int = Field(1024 * 1024, ge=2)
    stream_max_seconds: float = Field(3600.0, gt=0, description="audio one session may send")
    stream_idle_timeout_s: float = Field(60.0, gt=0)
    # 250: with 100 ms chunks a partial every 300 ms of audio; 150 (every 200 ms) spent so much of the CPU on
    # re-encoding open segments that 16 real-time streams waited 1.6-2.3x as long for their finals (bench.stream)
    stream_partial_interval_ms: float = Field(250.0, gt=0, description="audio between two partials of a segment")
    stream_partials: Literal["ctc", "decoder"] = Field("ctc", description="ctc: the CTC head's best path (cheap); "
                                                       "decoder: a search of stream_partial_beam_size")
    stream_endpoint_silence_ms: float = Field(500.0, gt=0)
    stream_partial_beam_size: int = Field(1, ge=1)
    stream_beam_size: int | None = Field(None, ge=1, description="beam of stream finals when the client's config "
                                         "names none (default: ASR_DEFAULT_BEAM_SIZE)")
    stream_max_pending_finals: int = Field(2, ge=1, description="finals of one stream queued at once; beyond it "
                                                                "the server stops reading that stream's socket")
    stream_min_realtime: float = Field(0.5, ge=0, description="audio a stream must send per second of wall time "
                                                              "(after the grace period; paused while the server "
                                                              "holds it back), or it is closed with 1008")
    stream_rate_grace_s: float = Field(10.0, ge=0)
    stream_max_duration_s: float = Field(7200.0, gt=0, description="wall-clock limit of one stream session")

    # HTTP
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: SecretStr | None = None
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    log_format: Literal["text", "json"] = "text"
    public_docs: bool = Field(False, description="serve /docs, /redoc and /openapi.json without the API key")
    shutdown_timeout_s: float = Field(30.0, gt=0)
    header_timeout_s: float = Field(10.0, gt=0, description="a request's headers must arrive within this")
    body_timeout_s: float = Field(120.0, gt=0, description="a request's body must arrive within this")
    max_connections: int = Field(512, ge=1, description="open connections; more are answered 503 and closed")

    # Ray Serve (``speech-transformer serve --ray``); replicas run this same app, each with these settings
    ray_min_replicas: int | None = Field(None, ge=0, description="autoscaling floor (with ray_max_replicas)")
    ray_max_replicas: int | None = Field(None, ge=1, description="autoscaling ceiling; unset = a fixed --replicas")
    ray_target_ongoing_requests: float = Field(8.0, gt=0, description="autoscaling aim: requests (streams count) "
                                                                        "in flight per replica")
    ray_max_ongoing_requests: int = Field(128, ge=1, description="requests one replica takes at once; the proxy "
                                                                 "queues the rest")
    ray_replica_cpus: float = Field(1.0, gt=0, description="CPUs Ray reserves for each replica")

    def decoding(self, beam_size: int | None = None, n_best: int = 1) -> DecodeOptions:
        """Decode options for one request: the server's CTC settings and the request's beam (or the default)."""
        return DecodeOptions(beam_size=self.default_beam_size if beam_size is None else beam_size, n_best=n_best,
                             ctc_weight=self.ctc_weight, ctc_mode=self.ctc_mode, lm_weight=self.lm_weight,
                             lm_fusion_weight=self.lm_fusion_weight, lm_fusion_bonus=self.lm_fusion_bonus,
                             beam_margin=self.beam_margin, end_margin=self.end_margin)

    def secrets(self) -> list[str]:
        """Values that no log line may show."""
        return [self.api_key.get_secret_value()] if self.api_key else []

    @model_validator(mode="after")
    def _replica_bounds(self) -> Settings:
        if self.ray_min_replicas is not None and self.ray_max_replicas is not None \
                and self.ray_min_replicas > self.ray_max_replicas:
            raise ValueError("ASR_RAY_MIN_REPLICAS is above ASR_RAY_MAX_REPLICAS")
        return self

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        """Accept ``ASR_CORS_ORIGINS=https://a.example,https://b.example`` as well as a list."""
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value
