"""``speech-transformer``: serve, transcribe files locally, talk to a running server, probe its health."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

BATCH = 16
STARTUP_FAILURE = 3  # the exit status uvicorn's own command line uses when start-up fails
USAGE_ERROR = 2  # argparse's, and an import's refusal


def _serve(args: argparse.Namespace) -> int:
    from model.checkpoint import CONFIG

    from .config import Settings
    from .main import create_app, make_server
    from .observability import configure_logging

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port), ("weights", args.weights)) if v is not None}
    settings = Settings(**overrides)
    if not (settings.weights / CONFIG).is_file():  # say it plainly, before uvicorn wraps it in a traceback
        print(f"error: no checkpoint at {settings.weights} (pass --weights DIR or set ASR_WEIGHTS)", file=sys.stderr)
        return STARTUP_FAILURE
    configure_logging(settings.log_level, settings.log_format, settings.secrets())
    if args.ray:
        try:
            from .ray_deployment import run
        except ImportError:
            print("error: --ray needs Ray Serve: pip install '.[ray]'", file=sys.stderr)
            return USAGE_ERROR
        return run(settings, args.replicas, args.ray_address)
    server = make_server(create_app(settings))
    try:
        server.run()
    except SystemExit as e:  # uvicorn exits this way when the app's start-up fails
        return int(e.code or STARTUP_FAILURE)
    return 0 if server.started else STARTUP_FAILURE


def _transcribe(args: argparse.Namespace) -> int:
    """Decode files with the recognizer itself (no server), through the server's own long-audio pipeline and
    decode settings; one transcript per line, in order."""
    from model.audio import AudioError
    from model.recognizer import Recognizer

    from .config import Settings
    from .segmenter import decode_and_plan, join_texts
    from .vad import SpeechDetector

    settings = Settings()
    recognizer = Recognizer.load(args.weights or settings.weights, device=args.device)
    detector = SpeechDetector(settings.vad_threshold)
    rate, status = recognizer.sample_rate, 0
    pieces: list = []  # every segment of every file, decoded BATCH at a time
    owners: list[int] = []
    for i, path in enumerate(args.files):
        try:
            audio, spans = decode_and_plan(Path(path), detector, rate, recognizer.max_segment_seconds)
        except (AudioError, OSError) as e:
            print(f"{path}: {e}", file=sys.stderr)
            status = 1
            continue
        pieces.extend(audio[a:b] for a, b in spans)
        owners.extend(i for _ in spans)
    options = settings.decoding(args.beam)
    results = [r for i in range(0, len(pieces), BATCH) for r in recognizer.transcribe(pieces[i: i + BATCH], options)]
    texts: list[list[str]] = [[] for _ in args.files]
    for owner, result in zip(owners, results):
        texts[owner].append(result.text)
    for parts in texts:
        print(join_texts(parts))
    return status


def _client(args: argparse.Namespace) -> int:
    from .client import stream_file, transcribe_file

    if not args.stream:
        print(transcribe_file(args.url, args.file, api_key=args.api_key, beam_size=args.beam)["text"])
        return 0

    def show(message: dict) -> None:
        kind = message.get("type")
        if kind == "partial":
            print(f"... {message['text']}", flush=True)
        elif kind == "final":
            print(f"[{message['start']:7.2f} - {message['end']:7.2f}] {message['text']}", flush=True)
        elif kind == "error":
            print(f"error: {message['message']}", file=sys.stderr, flush=True)

    stream_file(args.url, args.file, api_key=args.api_key, beam_size=args.beam, realtime=args.realtime,
                on_message=show)
    return 0


def _health(args: argparse.Namespace) -> int:
    """Exit 0 when ``/healthz`` answers 200 (the container's HEALTHCHECK)."""
    import httpx

    from .config import Settings

    url = args.url or f"http://127.0.0.1:{Settings().port}"
    try:
        ok = httpx.get(f"{url.rstrip('/')}/healthz", timeout=args.timeout).status_code == 200
    except httpx.HTTPError:
        ok = False
    return 0 if ok else 1


def _import_espnet(args: argparse.Namespace) -> int:
    """Convert an ESPnet2 model; any failure is one line and exit status 2, with nothing left in ``--out``."""
    from importers import ImportFailure
    from importers.espnet import import_espnet

    try:
        out = import_espnet(args.src, args.out, config=args.config, model_file=args.model_file, stats=args.stats,
                            bpemodel=args.bpemodel, force=args.force)
    except (ImportFailure, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return USAGE_ERROR
    print(f"wrote {out}: serve it with ASR_WEIGHTS={out} speech-transformer serve")
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="speech-transformer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the HTTP/WebSocket server (settings from ASR_* environment variables)")
    p.add_argument("--host", help="bind address (ASR_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (ASR_PORT, default 8000)")
    p.add_argument("--weights", type=Path, help="checkpoint directory (ASR_WEIGHTS, default the shipped weights/)")
    p.add_argument("--ray", action="store_true", help="run as Ray Serve replicas behind Ray's HTTP proxy "
                                                      "(pip install '.[ray]')")
    p.add_argument("--replicas", type=_positive, default=1, help="with --ray: model replicas (default 1; "
                                                                 "ASR_RAY_MAX_REPLICAS turns on autoscaling)")
    p.add_argument("--ray-address", help="with --ray: join this Ray cluster (default: start a local Ray)")
    p.set_defaults(run=_serve)

    p = sub.add_parser("transcribe", help="transcribe audio files locally, one line per file")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--weights", type=Path, help="checkpoint directory (ASR_WEIGHTS, default the shipped weights/)")
    p.add_argument("--beam", type=int, help="beam width (default: ASR_DEFAULT_BEAM_SIZE, as the server)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(run=_transcribe)

    p = sub.add_parser("client", help="send a file to a running server")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--stream", action="store_true", help="stream over the WebSocket API, printing partials")
    p.add_argument("--realtime", action="store_true", help="with --stream: pace the audio like a microphone")
    p.add_argument("--beam", type=int, help="beam width")
    p.add_argument("--api-key", help="bearer token, if the server has ASR_API_KEY set")
    p.set_defaults(run=_client)

    p = sub.add_parser("import", help="convert another toolkit's checkpoint into a checkpoint directory of ours")
    kinds = p.add_subparsers(dest="kind", required=True)
    p = kinds.add_parser("espnet", help="an ESPnet2 Transformer ASR model (the zoo's unpacked directory or its zip)")
    p.add_argument("src", type=Path, metavar="SRC", help="unpacked ESPnet2 model directory, or its zip")
    p.add_argument("--out", type=Path, required=True, help="checkpoint directory to write (must not exist)")
    p.add_argument("--config", type=Path, help="the model's config.yaml (default: exp/*/config.yaml under SRC)")
    p.add_argument("--model-file", type=Path, help="the .pth (default: the one beside the config)")
    p.add_argument("--stats", type=Path, help="feats_stats.npz (default: normalize_conf.stats_file)")
    p.add_argument("--bpemodel", type=Path, help="sentencepiece model (default: the config's bpemodel)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(run=_import_espnet)

    p = sub.add_parser("health", help="exit 0 if the server's /healthz answers (for container health checks)")
    p.add_argument("--url", help="server URL (default http://127.0.0.1:$ASR_PORT)")
    p.add_argument("--timeout", type=float, default=3.0)
    p.set_defaults(run=_health)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        return 130
    except (RuntimeError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
