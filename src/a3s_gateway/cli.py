"""The ``a3s-gateway`` command (SPEC §13.1): run · validate · routes · version [-v]."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import heap
from ._version import __version__
from .errors import ConfigError, StartupError

if TYPE_CHECKING:
    from .config.model import GatewayConfig

EXIT_OK, EXIT_CONFIG, EXIT_USAGE, EXIT_STARTUP = 0, 1, 2, 3
DEFAULT_PATHS = ("./gateway.hcl", "/etc/a3s-gateway/gateway.hcl")

USAGE = """\
a3s-gateway [-c FILE] [--listen ADDR] [--admin ADDR] [--log-level LEVEL] [--log-format FMT] [--workers N|auto]
                                        run the gateway
a3s-gateway validate [-c FILE] [--strict]  check a configuration
a3s-gateway routes [-c FILE]               print the route table in matching order
a3s-gateway routes --live ADDR            the route table of a running gateway (its admin API), providers' too
a3s-gateway version [-v]                   print the version (-v: compiled modules too)
"""


EPILOG = """\
configuration file, when -c is not given: $A3S_GATEWAY_CONFIG, ./gateway.hcl, /etc/a3s-gateway/gateway.hcl

signals: SIGHUP reloads the configuration (all or nothing); SIGTERM / SIGINT drain for shutdown_timeout, then stop.

environment:
  A3S_GATEWAY_CONFIG          configuration file (above)
  A3S_GATEWAY_NO_EXTENSIONS=1 run the pure-Python twins of the Cython modules (see: version -v)
  XDG_CACHE_HOME              where the HCL grammar tables are cached when the packaged ones do not fit

exit codes: 0 ok, 1 configuration invalid or not found, 2 usage error, 3 start-up failure

examples:
  a3s-gateway -c gateway.hcl                 run
  a3s-gateway validate -c gateway.hcl        every configuration error at once, as file:line:col
  a3s-gateway --listen 127.0.0.1:8080        no configuration: one entrypoint, every request 404
  a3s-gateway -c gateway.hcl --admin 0.0.0.0:9901 --log-format json   in a container
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # usage errors exit 2 (SPEC §13.1)
        self.print_usage(sys.stderr)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def _parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("-c", "--config", metavar="FILE", default=argparse.SUPPRESS, help="main configuration file")
    p = _Parser(prog="a3s-gateway", usage=USAGE, parents=[common],
                description="a3s-gateway: the traffic layer for AI-native services.",
                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    p.add_argument("--version", action="store_true", help="print the version and exit")
    p.add_argument("--listen", metavar="ADDR", help="serve a plain HTTP entrypoint 'web' on ADDR")
    p.add_argument("--admin", metavar="ADDR", help="admin listener address, or 'off'")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", default="text", choices=["text", "json"])
    p.add_argument("--workers", metavar="N|auto", help="worker processes")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    v = sub.add_parser("validate", parents=[common], help="check a configuration")
    v.add_argument("--strict", action="store_true", help="warnings are errors")
    r = sub.add_parser("routes", parents=[common], help="print the route table")
    r.add_argument("--live", metavar="ADDR",
                   help="ask the running gateway's admin API at ADDR (host:port or URL) instead of reading the file")
    ver = sub.add_parser("version", help="print the version")
    ver.add_argument("-v", "--verbose", action="store_true", help="also list compiled modules")
    return p


def find_config(explicit: str | None) -> tuple[str | None, list[str]]:
    """The configuration file to use (SPEC §13.1 search order) and the paths tried."""
    if explicit:
        return explicit, [explicit]
    tried: list[str] = []
    env = os.environ.get("A3S_GATEWAY_CONFIG")
    candidates = ([env] if env else []) + list(DEFAULT_PATHS)
    for path in candidates:
        tried.append(path)
        if Path(path).is_file():
            return path, tried
    return None, tried


def version_text(verbose: bool) -> str:
    lines = [f"a3s-gateway {__version__}"]
    if verbose:
        from ._compat import NO_EXTENSIONS, implementations

        lines.append(f"python {platform.python_version()} ({platform.python_implementation()})")
        lines.append(f"platform {platform.platform()}")
        if NO_EXTENSIONS:
            lines.append("A3S_GATEWAY_NO_EXTENSIONS=1: Cython modules disabled")
        rows = implementations()
        width = max(len(role) for role, _, _ in rows)
        for role, module, compiled in rows:
            lines.append(f"  {role:<{width}}  {module:<36} {'compiled' if compiled else 'pure-python'}")
    return "\n".join(lines)


def _setup_logging(level: str, fmt: str) -> None:
    from .observability import process_log

    process_log.setup(level, fmt)


def _cmd_validate(path: str, strict: bool) -> int:
    from .config import format_validate_report
    from .config.model import GatewayConfig

    try:
        result: GatewayConfig | ConfigError = GatewayConfig.from_file(path)
    except ConfigError as e:
        result = e
    text, code = format_validate_report(path, result, strict=strict)
    print(text)
    return int(code)


ROUTE_COLUMNS = ("PRIORITY", "NAME", "ENTRYPOINTS", "RULE", "SERVICE", "MIDDLEWARES", "SOURCE")


def _print_table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())


def _cmd_routes(path: str) -> int:
    """The file's routers; the items providers add at run time are only in ``routes --live``."""
    from .config.model import GatewayConfig

    try:
        config = GatewayConfig.from_file(path)
    except ConfigError as e:
        print(str(e))
        return EXIT_CONFIG
    rows = [ROUTE_COLUMNS]
    ordered = sorted(config.routers.values(), key=lambda r: (-r.effective_priority, r.name.encode()))
    for r in ordered:
        rows.append((str(r.effective_priority), r.name, ",".join(r.entrypoints) or "-", r.rule or "-", r.service,
                     ",".join(r.middlewares) or "-", "file"))
    _print_table(rows)
    p = config.providers
    dynamic = [name for name, block in (("dns", p.dns), ("discovery", p.discovery), ("kubernetes", p.kubernetes))
               if block]
    if dynamic:
        print(f"note: the {', '.join(dynamic)} provider(s) add routers at run time; "
              "`a3s-gateway routes --live <admin address>` lists them", file=sys.stderr)
    return EXIT_OK


def _cmd_routes_live(address: str) -> int:
    """``GET /api/gateway/routes`` of a running gateway, as the file table plus each router's source."""
    import json
    import urllib.error
    import urllib.request

    base = address if "://" in address else f"http://{address}"
    url = base.rstrip("/") + "/api/gateway/routes"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            routes = json.loads(resp.read())
    except urllib.error.HTTPError as e:
        print(f"error: {url}: HTTP {e.code} {e.reason}")
        return EXIT_STARTUP
    except (OSError, ValueError) as e:
        print(f"error: {url}: {getattr(e, 'reason', e)} (is the gateway running with its admin API on {address}?)")
        return EXIT_STARTUP
    rows = [ROUTE_COLUMNS]
    for r in routes:
        rows.append((str(r["priority"]), r["name"], ",".join(r["entrypoints"]) or "-", r["rule"] or "-",
                     r["service"], ",".join(r["middlewares"]) or "-", r.get("provider", "file")))
    _print_table(rows)
    return EXIT_OK


def _demo_config(listen: str) -> GatewayConfig:
    from .config.model import GatewayConfig

    return GatewayConfig.from_hcl(f'entrypoints "web" {{ address = "{listen}" }}\n', filename="<--listen>")


def _limit_loop_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Errors the event loop reports itself (e.g. the stdlib loop's accept() failing with EMFILE, once a second per
    listener while descriptors are exhausted) are logged once per message every 10 s with the count in between."""
    from .observability.log_limit import RateLimitedLog

    limited = RateLimitedLog(logging.getLogger("a3s_gateway.loop"))

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message") or "event loop error")
        exc = context.get("exception")
        key = (message, type(exc).__name__ if exc is not None else "")
        limited.error(key, "%s", message, fields={"source": "event loop"},
                      exc_info=exc if isinstance(exc, BaseException) else None)

    loop.set_exception_handler(handler)


async def _serve(config: GatewayConfig, admin: str | None) -> int:
    from .gateway import Gateway

    gateway = Gateway(config, admin=admin, processes_decided=True)
    _limit_loop_errors(asyncio.get_running_loop())
    # signal handlers first: a SIGTERM that arrives while the listeners are being bound still stops gracefully
    waiter = asyncio.ensure_future(gateway.wait_for_shutdown())
    await asyncio.sleep(0)
    try:
        await gateway.start()
    except StartupError as e:
        waiter.cancel()
        print(f"error: {e}", file=sys.stderr)
        return EXIT_STARTUP
    for name, (host, port) in gateway.bound_addresses().items():
        print(f"a3s-gateway {__version__}: entrypoint {name} on {host or '*'}:{port}", file=sys.stderr, flush=True)
    admin_at = gateway.admin_address()
    if admin_at is not None:
        print(f"a3s-gateway {__version__}: admin API on {admin_at[0]}:{admin_at[1]}", file=sys.stderr, flush=True)
    # Everything loaded so far (configuration, parser tables, modules) lives as long as the process: keep it out of
    # the cyclic collector's scans, so collections during traffic stay short (tail latency of streams).
    gc.collect()
    gc.freeze()
    trimmer = heap.start_trimmer(lambda: sum(gateway.connection_counts().values()))
    try:
        await waiter
    finally:
        heap.stop_trimmer(trimmer)
    return EXIT_OK


def _tune_malloc() -> None:
    """Keep glibc from trimming the heap around every read buffer (TOOLCHAIN.md: ~3x MB/s on large bodies)."""
    heap.tune()


def _run_loop(config: GatewayConfig, admin: str | None) -> int:
    _tune_malloc()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - platforms without uvloop
        return asyncio.run(_serve(config, admin))
    return uvloop.run(_serve(config, admin))


def _int_or_none(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _run_supervisor(config: GatewayConfig, workers: int, admin: str | None, log_args: tuple[str, ...]) -> int:
    """``workers > 1``: a supervisor process and ``workers`` worker processes (SPEC §13.4)."""
    from .workers.supervisor import serve

    _tune_malloc()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - platforms without uvloop
        return asyncio.run(serve(config, workers, admin, log_args))
    return uvloop.run(serve(config, workers, admin, log_args))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``a3s-gateway`` console script."""
    args = _parser().parse_args(argv)
    command = args.command
    if args.version and command is None:
        command = "version"
    if command == "version":
        print(version_text(getattr(args, "verbose", False)))
        return EXIT_OK
    explicit = getattr(args, "config", None)
    path, tried = find_config(explicit)
    if command == "routes" and getattr(args, "live", None):
        return _cmd_routes_live(args.live)
    if command in ("validate", "routes"):
        if path is None:
            print(f"error: no configuration file found (tried: {', '.join(tried)})")
            return EXIT_CONFIG
        if not Path(path).is_file():
            print(f"error: cannot read configuration file {path!r}: no such file")
            return EXIT_CONFIG
        return _cmd_validate(path, args.strict) if command == "validate" else _cmd_routes(path)

    _setup_logging(args.log_level, args.log_format)
    if args.admin not in (None, "off"):
        from .config.schema.checks import parse_address

        if parse_address(args.admin) is None:
            print(f"error: --admin {args.admin!r}: use host:port (e.g. 127.0.0.1:9901) or off", file=sys.stderr)
            return EXIT_USAGE
    workers_flag: int | str | None = None
    if args.workers is not None:
        workers_flag = args.workers if args.workers == "auto" else _int_or_none(args.workers)
        if workers_flag is None or (isinstance(workers_flag, int) and workers_flag < 1):
            print(f"error: --workers {args.workers!r}: use a number >= 1 or auto", file=sys.stderr)
            return EXIT_USAGE
    worker = os.environ.pop("A3S_GATEWAY_WORKER", None)
    if worker is not None:  # started by a supervisor (SPEC §13.4)
        from .workers.worker import main as worker_main

        return worker_main(worker)
    if path is None or (explicit and not Path(path).is_file()):
        if args.listen and not explicit:
            config = _demo_config(args.listen)
        else:
            what = f"cannot read configuration file {path!r}: no such file" if explicit else (
                f"no configuration file found (tried: {', '.join(tried)})")
            print(f"error: {what}", file=sys.stderr)
            return EXIT_CONFIG
    else:
        try:
            from .config.model import GatewayConfig

            config = GatewayConfig.from_file(path)
        except ConfigError as e:
            print(str(e), file=sys.stderr)
            return EXIT_CONFIG
        if args.listen:
            print("error: not supported yet: --listen together with a configuration file", file=sys.stderr)
            return EXIT_STARTUP
    from .cpus import resolve_workers

    workers = resolve_workers(workers_flag if workers_flag is not None else config.workers)
    try:
        if workers > 1:
            return _run_supervisor(config, workers, args.admin, ("--log-level", args.log_level,
                                                                  "--log-format", args.log_format))
        return _run_loop(config, args.admin)
    except KeyboardInterrupt:  # pragma: no cover - second Ctrl-C during start-up
        return EXIT_OK
