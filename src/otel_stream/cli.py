"""The ``otel-stream`` command: ``demo`` and ``probe``.

Usage errors exit 1, not argparse's usual 2: 2 is a negative verdict (``probe``: the
chain buffers; ``demo``: a mark of the report is ✗). An unknown option after a command
is reported with that command's usage, not the top-level one.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from typing import NoReturn

from otel_stream.version import __version__

EXTRA_HINT = "pip install 'otel-stream[demo]'"


class _Parser(argparse.ArgumentParser):
    #: The subcommands' parsers, by name (the top-level parser only).
    commands: dict[str, argparse.ArgumentParser]

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(1, f"{self.prog}: error: {message}\n")


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a number ≥ 0, got {text!r}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}")
    return value


def build_parser() -> _Parser:
    parser = _Parser(
        prog="otel-stream",
        description="OpenTelemetry for streaming HTTP responses: a demo, and a probe that "
        "finds the hop that buffers a stream.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = commands.add_parser(
        "demo",
        help="run an instrumented fake model under a realistic load and report the telemetry",
        description="Start a fake OpenAI-compatible streaming model on 127.0.0.1, wrapped by "
        "StreamingMiddleware, drive a mixed load with real HTTP clients, and compare the "
        "exported metrics with what the clients measured: each quantile's error against "
        "the clients' exact value, held to the tolerance its bucket and the clocks allow. "
        "With --relay the clients call an instrumented relay (an LLM gateway) in front of "
        "the model, and the report tells the model's time to first byte from the hop's. "
        "Standard OTEL_* exporter variables send the same data to a real backend; "
        "OTEL_STREAM_TTFB_BUCKETS and OTEL_STREAM_DURATION_BUCKETS change the buckets. "
        "Exit status: 0 every mark is ✓, 2 a mark is ✗ (the report lists which), 1 an "
        "error, 130 interrupted.",
    )
    demo.add_argument(
        "--seconds",
        type=_positive_float,
        help="how long to start new requests (default 20, or no limit with --requests)",
    )
    demo.add_argument("--requests", type=_positive_int, help="stop after this many requests")
    demo.add_argument(
        "--concurrency", type=_positive_int, default=16, help="clients at a time (default 16)"
    )
    demo.add_argument(
        "--ttft",
        type=_non_negative_float,
        default=0.35,
        help="median time to first token, seconds (default 0.35)",
    )
    demo.add_argument(
        "--token-interval",
        type=_positive_float,
        default=0.025,
        help="seconds between tokens (default 0.025)",
    )
    demo.add_argument(
        "--tokens", type=_positive_int, default=48, help="median answer length (default 48)"
    )
    demo.add_argument(
        "--long-stream",
        type=_non_negative_float,
        help="seconds of the one long stream (default: half the run, at most 10; 0: none)",
    )
    demo.add_argument(
        "--relay",
        action="store_true",
        help="put a relay between the clients and the model, as an LLM gateway: a Starlette "
        "app under StreamingMiddleware that streams each answer on from the model with "
        "httpx.AsyncClient, its calls recorded by StreamingClientInstrumentor; the report "
        "adds the model's time to first byte as the relay's client read it, the hop the "
        "relay added (http.server.stream.hop.time_to_first_byte), each held to the model's "
        "and the clients' stopwatches, and how the requests ended behind the relay",
    )
    demo.add_argument(
        "--relay-hold",
        type=_non_negative_float,
        default=0.1,
        help="with --relay: median seconds the relay holds an answer's first chunk before "
        "passing it on, like a guardrail reading the start of the answer (default 0.1; "
        "0: it passes every chunk on at once, and the hop is a millisecond)",
    )
    demo.add_argument("--seed", type=int, help="seed of the load's random choices")
    demo.add_argument("--json", action="store_true", help="print the report as JSON")
    demo.add_argument(
        "--prometheus-port",
        type=_port,
        help="also expose the metrics at http://127.0.0.1:PORT/metrics",
    )
    demo.add_argument(
        "--serve",
        action="store_true",
        help="only serve the instrumented fake model (POST /v1/chat/completions) until Ctrl-C",
    )
    demo.add_argument(
        "--port", type=_port, default=8000, help="port of --serve on 127.0.0.1 (default 8000)"
    )

    probe = commands.add_parser(
        "probe",
        help="request a streaming endpoint like a browser and say whether the chain "
        "streams or buffers",
        description="Request URL the way a browser does (Accept-Encoding: gzip, deflate, br), "
        "time every chunk as it arrives, and say whether the chain streams (exit 0) or "
        "buffers (exit 2); exit 1 on an error. Without --data, a URL ending in "
        "/v1/chat/completions gets a minimal streaming chat request.",
    )
    probe.add_argument("url", help="the streaming endpoint, http:// or https://")
    probe.add_argument("--method", "-X", help="HTTP method (default GET, or POST with --data)")
    probe.add_argument("--data", "-d", help="request body (JSON is sent as application/json)")
    probe.add_argument(
        "--header",
        "-H",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="extra request header (repeatable)",
    )
    probe.add_argument(
        "--model",
        default="demo",
        help="model of the default chat request (default: demo, the fake model's name)",
    )
    probe.add_argument(
        "--timeout",
        type=_positive_float,
        default=30.0,
        help="stop reading after this many seconds and judge what arrived (default 30)",
    )
    parser.commands = {"demo": demo, "probe": probe}
    return parser


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line's arguments; exits 1 with the right usage on a usage error.

    argparse hands arguments no subcommand knows back to the top-level parser, which
    would print the top-level usage: they are reported by the subcommand's parser."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        command_parser = parser.commands.get(args.command, parser)
        command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``otel-stream`` console script; returns the exit status."""
    args = parse(argv)
    if args.command == "demo":
        return _demo(args)
    return _probe(args)


def _missing(command: str, error: ImportError) -> int:
    name = error.name or str(error)
    print(
        f"otel-stream {command}: the module {name!r} is missing; the {command} command needs "
        f"the demo extra: {EXTRA_HINT}",
        file=sys.stderr,
    )
    return 1


def _demo(args: argparse.Namespace) -> int:
    try:
        from otel_stream.demo import load, run
        from otel_stream.demo.model import Behaviour
        from otel_stream.demo.telemetry import ExporterError
    except ImportError as error:
        return _missing("demo", error)
    pace = load.Pace(ttft=args.ttft, token_interval=args.token_interval, tokens=args.tokens)
    if args.serve and args.relay:
        print(
            "otel-stream demo: --relay drives the load; it does not go with --serve",
            file=sys.stderr,
        )
        return 1
    try:
        if args.serve:
            behaviour = Behaviour(
                tokens=args.tokens, ttft=args.ttft, token_interval=args.token_interval
            )
            return run.serve(args.port, prometheus_port=args.prometheus_port, behaviour=behaviour)
        seconds = args.seconds
        if seconds is None:
            seconds = math.inf if args.requests is not None else 20.0
        long_stream = args.long_stream
        if long_stream is None:
            long_stream = min(10.0, seconds / 2)
        plan = load.LoadPlan(
            seconds=seconds,
            concurrency=args.concurrency,
            requests=args.requests,
            long_stream_seconds=long_stream,
            seed=args.seed,
            pace=pace,
            relay=args.relay,
            relay_hold=args.relay_hold,
        )
        return run.run_demo(plan, prometheus_port=args.prometheus_port, as_json=args.json)
    except ExporterError as error:
        print(f"otel-stream demo: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"otel-stream demo: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _probe(args: argparse.Namespace) -> int:
    try:
        from otel_stream import probe
    except ImportError as error:
        return _missing("probe", error)
    return probe.main(
        args.url,
        method=args.method,
        data=args.data,
        headers=args.header,
        timeout=args.timeout,
        model=args.model,
    )


if __name__ == "__main__":
    sys.exit(main())
