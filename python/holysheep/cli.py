"""The ``holysheep`` command (also ``python -m holysheep``): one subcommand per job.

Adding a subcommand is one function and one registration: write ``_add_<name>(subcommands)`` that adds
its parser and sets ``run`` to a function of the parsed arguments returning the exit status, then list it
in ``SUBCOMMANDS``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any, Callable

from holysheep.errors import ConfigError

if TYPE_CHECKING:
    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = ["main"]


def _add_mock_server(subcommands: Subcommands) -> None:
    parser = subcommands.add_parser(
        "mock-server",
        help="run a MockGateway: an OpenAI-compatible server on 127.0.0.1 that enforces limits",
        description="Serve an OpenAI-compatible API on 127.0.0.1 that enforces limits per API key, "
        "as a strict sliding window, until Ctrl-C. Point a client at the printed base URL.",
    )
    limits = parser.add_argument_group("limits per API key (none by default)")
    for name, what in [
        ("rpm", "requests per window"),
        ("tpm", "LLM tokens per window"),
        ("rph", "requests per hour (60 windows)"),
        ("tph", "tokens per hour"),
        ("rpd", "requests per day (1,440 windows)"),
        ("tpd", "tokens per day"),
        ("concurrency", "requests in flight at once"),
        ("credit-tokens", "tokens a key may spend in all; then 429 insufficient_quota"),
    ]:
        limits.add_argument(f"--{name}", type=int, metavar="N", help=what)
    limits.add_argument(
        "--window-s", type=float, default=60.0, metavar="S", help="length of a window (default 60)"
    )
    limits.add_argument(
        "--api-key",
        action="append",
        dest="api_keys",
        metavar="KEY",
        help="accept only this key (repeat for more); by default any bearer token",
    )

    behaviour = parser.add_argument_group("latency and faults")
    behaviour.add_argument(
        "--latency", type=float, default=0.0, metavar="S", help="seconds before each answer"
    )
    behaviour.add_argument(
        "--latency-max",
        type=float,
        metavar="S",
        help="draw each latency uniformly between --latency and this",
    )
    behaviour.add_argument("--seed", type=int, default=0, help="seed for latency draws and faults")
    for name, what in [
        ("server-error", "500"),
        ("bad-gateway", "502"),
        ("unavailable", "503"),
        ("timeout", "no answer at all"),
        ("reset", "a connection reset"),
        ("malformed", "200 with invalid JSON"),
    ]:
        behaviour.add_argument(
            f"--{name}",
            type=float,
            default=0.0,
            metavar="FRACTION",
            help=f"fraction of admitted requests answered with {what}",
        )
    behaviour.add_argument(
        "--outage",
        type=float,
        nargs=2,
        metavar=("START", "END"),
        help="seconds after start between which every request gets 503",
    )

    parser.add_argument(
        "--port", type=int, default=8080, help="port on 127.0.0.1 (0 picks one; default 8080)"
    )
    parser.add_argument(
        "--no-log",
        dest="log",
        action="store_false",
        help="keep no admission log (for long runs: a record costs 40 bytes)",
    )
    parser.set_defaults(run=_run_mock_server)


def _run_mock_server(args: argparse.Namespace) -> int:
    from holysheep.testing import Faults, MockGateway

    faults = Faults(
        server_error=args.server_error,
        bad_gateway=args.bad_gateway,
        unavailable=args.unavailable,
        timeout=args.timeout,
        reset=args.reset,
        malformed=args.malformed,
        outage=None if args.outage is None else (args.outage[0], args.outage[1]),
    )
    latency = args.latency if args.latency_max is None else (args.latency, args.latency_max)
    try:
        gateway = MockGateway(
            rpm=args.rpm,
            tpm=args.tpm,
            concurrency=args.concurrency,
            latency=latency,
            faults=faults,
            window_s=args.window_s,
            rph=args.rph,
            rpd=args.rpd,
            tph=args.tph,
            tpd=args.tpd,
            credit_tokens=args.credit_tokens,
            api_keys=args.api_keys,
            port=args.port,
            seed=args.seed,
            log=args.log,
        ).start()
    except (ConfigError, OSError) as err:
        print(f"holysheep mock-server: {err}", file=sys.stderr)
        return 2
    limits = ", ".join(
        f"{name}={getattr(args, name)}"
        for name in ("rpm", "tpm", "concurrency")
        if getattr(args, name) is not None
    )
    # Caught before the banner: whoever reads it may interrupt at once.
    interrupted = _catch_interrupts()
    print(
        f"MockGateway serving {gateway.base_url} ({limits or 'no limits'}; window {args.window_s:g} s). "
        "Ctrl-C stops it.",
        flush=True,
    )
    _wait_for(interrupted)
    gateway.stop()
    if args.log:
        records = gateway.admission_log()
        admitted = sum(record.admitted for record in records)
        refused = sum(record.status == 429 for record in records)
        print(f"stopped: {len(records)} requests, {admitted} admitted, {refused} answered 429")
    return 0


def _catch_interrupts() -> threading.Event:
    """An event set by SIGINT or SIGTERM from now on (instead of KeyboardInterrupt or death)."""
    interrupted = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        interrupted.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    return interrupted


def _wait_for(interrupted: threading.Event) -> None:
    # Timed waits keep the main thread returning to the interpreter, where signal handlers run.
    while not interrupted.wait(0.5):
        pass


def _add_demo(subcommands: Subcommands) -> None:
    from holysheep import demo

    parser = subcommands.add_parser(
        "demo",
        help="the main job: a RAG batch through holysheep and through the bare SDK, against a MockGateway",
        description=demo.__doc__,
    )
    demo.add_arguments(parser)
    parser.set_defaults(run=demo.run)


def _add_check(subcommands: Subcommands) -> None:
    parser = subcommands.add_parser(
        "check",
        help="check the API key, the connection and the quota headers of an endpoint",
        description="Checks the API key's form, reaches GET /models, and shows the rate-limit headers "
        "and quota the endpoint reports. Only the endpoint given is contacted.",
    )
    parser.add_argument("--base-url", default=None, help="the API (default https://api.holysheep.ai/v1)")
    parser.add_argument("--api-key", default=None, help="the key (default $HOLYSHEEP_API_KEY)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request (10)")
    parser.set_defaults(run=_run_check)


def _masked(key: str) -> str:
    return f"{key[:3]}...{key[-4:]}" if len(key) > 10 else "***"


def _model_count(models: Any) -> int | None:
    """How many models a ``GET /models`` answer lists, or None when it is not the list of models the
    OpenAI API answers (``{"data": [...]}``)."""
    try:
        body = models.json()
    except ValueError:  # not JSON at all
        return None
    data = body.get("data") if isinstance(body, dict) else None
    return len(data) if isinstance(data, list) else None


def _run_check(args: argparse.Namespace) -> int:
    from holysheep._holysheep import _check_positive
    from holysheep._endpoint import HOLYSHEEP_BASE_URL, checked_base_url, resolve_api_key
    from holysheep.transport import http_library as http_lib

    _check_positive("timeout", args.timeout)
    base_url = checked_base_url(args.base_url or HOLYSHEEP_BASE_URL).rstrip("/")
    try:
        key = resolve_api_key(args.api_key, base_url)
    except ConfigError as err:
        print(f"key: {err}")
        return 2
    print(f"key: {_masked(key)} ({'HolySheep' if key.startswith('hs_') else 'not a HolySheep'} key form)")
    headers = {"Authorization": f"Bearer {key}"}
    try:
        with http_lib.Client(base_url=base_url, headers=headers, timeout=args.timeout) as http:
            models = http.get("/models")
            quota = http.get("/quota") if models.status_code == 200 else None
    except http_lib.HTTPError as err:
        print(f"connection: cannot reach {base_url}: {type(err).__name__}: {err}")
        return 1
    if models.status_code in (401, 403):
        print(f"connection: {base_url} refused the key (HTTP {models.status_code})")
        return 1
    if models.status_code != 200:
        print(f"connection: GET /models answered HTTP {models.status_code}")
        return 1
    count = _model_count(models)
    if count is None:
        kind = models.headers.get("content-type", "no content-type")
        print(f"connection: GET /models answered 200 but not an OpenAI model list ({kind}): is {base_url} the API?")
        return 1
    print(f"connection: {base_url} answers; {count} models")
    limits = {k: v for k, v in models.headers.items() if k.lower().startswith("x-ratelimit-")}
    for name in sorted(limits):
        print(f"  {name}: {limits[name]}")
    if not limits:
        print("  no x-ratelimit-* headers")
    if quota is not None and quota.status_code == 200:
        print(f"quota: {quota.text.strip()}")
    return 0


def _add_preview(subcommands: Subcommands) -> None:
    parser = subcommands.add_parser(
        "preview",
        help="simulate a limiter against a traffic pattern on a virtual clock: table + PNG",
        description="Runs a limiter configuration against a traffic pattern (and a server's limits) on a "
        "virtual clock, with holysheep's own limiter code, and prints what it would do: admitted, waits, "
        "time to drain, which limit binds and when, the server's 429s, cost.",
        epilog='example: holysheep preview "ramp 0->50/s over 1m, 50/s for 10m" --tier pro --latency 2 '
        "--tokens 800 --server-tier pro --png preview.png",
    )
    parser.add_argument(
        "traffic",
        help='stages ("ramp 0->50/s over 1m, 50/s for 10m", "1000 at once"), requests per second '
        "(for --duration), or a JSONL trace path ending in .jsonl",
    )
    limiter = parser.add_argument_group("the limiter previewed")
    limiter.add_argument("--tier", help="a plan's limits: free, starter, pro, enterprise")
    limiter.add_argument("--rpm", type=float, help="requests per minute")
    limiter.add_argument("--tpm", type=float, help="LLM tokens per minute")
    limiter.add_argument("--max-qps", type=float, help="requests per second")
    limiter.add_argument("--max-concurrency", type=int, help="requests in flight at once")
    limiter.add_argument("--burst", type=float, help="pace --rpm/--max-qps evenly (GCRA) with room for this many")
    server = parser.add_argument_group("the server (none by default)")
    server.add_argument("--server-tier", help="the server enforces this plan's limits")
    server.add_argument("--server-rpm", type=int, help="requests per minute the server allows")
    server.add_argument("--server-tpm", type=int, help="tokens per minute the server allows")
    server.add_argument("--server-concurrency", type=int, help="requests in flight the server allows")
    requests = parser.add_argument_group("the requests")
    requests.add_argument("--latency", type=float, default=0.0, metavar="S", help="seconds per answer (0)")
    requests.add_argument("--latency-max", type=float, metavar="S", help="draw each latency between --latency and this")
    requests.add_argument("--tokens", type=int, default=0, help="LLM tokens per request (0)")
    requests.add_argument("--model", help="price the tokens at this model's price (for cost and budgets)")
    requests.add_argument("--duration", type=float, metavar="S", help="seconds a numeric traffic rate lasts (60)")
    requests.add_argument("--timeout", type=float, metavar="S", help="seconds a request may wait for the limiter")
    requests.add_argument("--max-attempts", type=int, default=5, help="attempts per request against 429s (5)")
    parser.add_argument("--png", metavar="PATH", help="also write the plot here (needs matplotlib)")
    parser.set_defaults(run=_run_preview)


def _traffic_argument(text: str) -> str | float:
    """A number is a rate in requests per second; anything else is stages or a trace path."""
    try:
        return float(text)
    except ValueError:
        return text


def _run_preview(args: argparse.Namespace) -> int:
    from holysheep import HolySheepRateLimiter, ServerModel, preview

    limiter = HolySheepRateLimiter(
        args.max_qps,
        args.max_concurrency,
        rpm=args.rpm,
        tpm=args.tpm,
        burst=args.burst,
        tier=args.tier,
    )
    server_limits = (args.server_tier, args.server_rpm, args.server_tpm, args.server_concurrency)
    server = None
    if any(value is not None for value in server_limits):
        server = ServerModel(
            args.server_tier, rpm=args.server_rpm, tpm=args.server_tpm, concurrency=args.server_concurrency
        )
    latency = args.latency if args.latency_max is None else (args.latency, args.latency_max)
    report = preview(
        limiter,
        _traffic_argument(args.traffic),
        latency=latency,
        tokens=args.tokens,
        server=server,
        duration=args.duration,
        model=args.model,
        max_attempts=args.max_attempts,
        timeout=args.timeout,
    )
    print(report.table())
    if args.png:
        try:
            print(f"plot: {report.plot(args.png)}")
        except ModuleNotFoundError as err:
            print(f"no plot: {err}", file=sys.stderr)
            return 1
    return 0


def _add_batch(subcommands: Subcommands) -> None:
    parser = subcommands.add_parser(
        "batch",
        help="send a JSONL file of requests (OpenAI Batch API format) under limits; resumable",
        description="Sends every request of INPUT (lines {custom_id, method, url, body}) not yet answered in "
        "OUTPUT, appending one answer line per request (the Batch API's output format). Rerun with the same "
        "OUTPUT to resume. Exit status: 0 when every request succeeded, 1 when some failed or were left "
        "unsent, 2 for a setting or an input that cannot work.",
    )
    parser.add_argument("input", help="the requests, one JSON object a line")
    parser.add_argument("-o", "--output", required=True, help="where answers are appended (and resumed from)")
    parser.add_argument("--base-url", default=None, help="the API (default https://api.holysheep.ai/v1)")
    parser.add_argument("--api-key", default=None, help="the key (default $HOLYSHEEP_API_KEY)")
    limits = parser.add_argument_group("limits (none by default)")
    limits.add_argument("--tier", default=None, help="a HolySheep plan's limits: free, starter, pro, enterprise")
    limits.add_argument("--rpm", type=float, default=None, metavar="N", help="requests per minute")
    limits.add_argument("--tpm", type=float, default=None, metavar="N", help="LLM tokens per minute")
    limits.add_argument(
        "--max-concurrency", type=int, default=None, metavar="N", help="requests in flight at once (default 64)"
    )
    fleet = parser.add_argument_group("a fleet of jobs sharing the limits through Redis")
    fleet.add_argument("--redis-url", default=None, metavar="URL", help="hold the limits in this Redis (redis://, rediss://, redis+sentinel://)")
    fleet.add_argument("--key", default=None, help="the shared limit's name: every job naming it keeps to it together")
    fleet.add_argument(
        "--on-error", default="local", choices=["local", "fail_open", "fail_closed"],
        help="while Redis is away: this job's share of the limits (local), no limits (fail_open), or stop (fail_closed)",
    )
    parser.add_argument("--budget-usd", type=float, default=None, metavar="X", help="stop sending once X dollars are spent")
    parser.add_argument("--timeout", type=float, default=600.0, metavar="S", help="seconds per attempt (600)")
    parser.add_argument("--retry-failed", action="store_true", help="send again the requests OUTPUT says failed")
    parser.add_argument("--dry-run", action="store_true", help="send nothing: say what it would take and cost")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no live progress line")
    parser.set_defaults(run=_run_batch)


def _run_batch(args: argparse.Namespace) -> int:
    from holysheep._engine import run_batch

    limits: dict[str, Any] = {"tier": args.tier, "rpm": args.rpm, "tpm": args.tpm}
    limiter = None
    if args.redis_url is not None or args.key is not None:
        from holysheep import HolySheepRateLimiter, RedisBackend

        if args.redis_url is None:
            raise ConfigError("key: names a limit shared through Redis; give --redis-url too", "key")
        backend = RedisBackend(args.redis_url, on_error=args.on_error)
        limiter = HolySheepRateLimiter(max_concurrency=args.max_concurrency, backend=backend, key=args.key, **limits)
        limits = {}
    try:
        report = run_batch(
            args.input,
            args.output,
            base_url=args.base_url,
            api_key=args.api_key,
            limiter=limiter,
            max_concurrency=args.max_concurrency,
            timeout=args.timeout,
            budget_usd=args.budget_usd,
            retry_failed=args.retry_failed,
            **limits,
            progress=args.progress and not args.dry_run,
            dry_run=args.dry_run,
        )
    except OSError as err:
        print(f"holysheep batch: {err}", file=sys.stderr)
        return 2
    print(report)
    return 0 if args.dry_run or (report.failed == 0 and report.unsent == 0) else 1


SUBCOMMANDS: list[Callable[[Subcommands], None]] = [_add_batch, _add_check, _add_demo, _add_mock_server, _add_preview]


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="holysheep",
        description="Keeps traffic to OpenAI-compatible LLM APIs inside its limits "
        "and alive through its failures.",
    )
    subcommands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for add_subcommand in SUBCOMMANDS:
        add_subcommand(subcommands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line and returns its exit status: 2 for a setting that cannot work, said in one
    line on stderr."""
    args = build_parser().parse_args(argv)
    try:
        status: int = args.run(args)
    except ConfigError as err:
        print(f"holysheep: {err}", file=sys.stderr)
        return 2
    return status
