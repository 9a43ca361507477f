"""Instructions per request of the real gateway process (uvloop, real sockets, the nginx backend), by callgrind.

    python bench/live_count.py                      # no middleware vs the five-middleware bench chain
    python bench/live_count.py --chains ,size,5     # any BENCH_MIDDLEWARES specs; "" is no middleware

Each chain gets its own gateway under ``valgrind --tool=callgrind``. After a warm-up, the counters are dumped
(and zeroed) after N1 and again after N2 sequential keep-alive GETs on one connection; (count(N2) - count(N1)) /
(N2 - N1) is the user-space cost of one request, start-up and warm-up excluded. ``--connections C`` spreads the
requests over C connections in flight together, as a load generator would. Unlike wall-clock figures, it does
not move with what the other core of a shared machine does. Traffic goes to 127.0.0.1 only; every process started
is stopped by PID when the run ends.
"""

from __future__ import annotations

import argparse
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _peers import Lab, Proc, find_tool, free_port, gateway_conf, plan_cpus, python_for_gateway, wait_listening

REQUEST = b"GET /small HTTP/1.1\r\nHost: bench\r\n\r\n"  # the small scenario of load_compare.py
_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)", re.I)


def requests(port: int, n: int) -> None:
    """``n`` keep-alive GETs on one connection, each answered before the next is sent."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        buf = b""
        for _ in range(n):
            s.sendall(REQUEST)
            while True:
                end = buf.find(b"\r\n\r\n")
                if end >= 0:
                    match = _LENGTH.search(buf, 0, end + 2)
                    if match is None:
                        raise RuntimeError(f"response without Content-Length: {buf[:200]!r}")
                    total = end + 4 + int(match.group(1))
                    if len(buf) >= total:
                        if not buf.startswith(b"HTTP/1.1 200 "):
                            raise RuntimeError(f"unexpected response: {buf[:200]!r}")
                        buf = buf[total:]
                        break
                chunk = s.recv(65536)
                if not chunk:
                    raise RuntimeError("the gateway closed the connection")
                buf += chunk


def requests_concurrent(port: int, n: int, connections: int) -> None:
    """``n`` GETs spread over ``connections`` keep-alive connections in flight together (one thread each)."""
    if connections <= 1:
        requests(port, n)
        return
    errors: list[BaseException] = []

    def run(count: int) -> None:
        try:
            requests(port, count)
        except BaseException as exc:  # reported after the join
            errors.append(exc)

    share, extra = divmod(n, connections)
    threads = [threading.Thread(target=run, args=(share + (1 if i < extra else 0),)) for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} client connection(s) failed: {errors[0]!r}")


def dump_total(pid: int, out: Path, label: str) -> int:
    """Dump (and zero) the callgrind counters of ``pid``; the instruction total of that dump."""
    before = set(out.parent.glob(out.name + "*"))
    subprocess.run(["callgrind_control", "-d", label, str(pid)], capture_output=True, check=True, timeout=120)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        new = [p for p in out.parent.glob(out.name + "*") if p not in before]
        for path in new:
            match = re.search(r"^(?:totals|summary): *(\d+)", path.read_text(errors="replace"), re.M)
            if match:
                return int(match.group(1))
        time.sleep(0.2)
    raise RuntimeError(f"callgrind wrote no dump for {label}")


def count(lab: Lab, spec: str, n1: int, n2: int, connections: int = 1) -> float:
    port = free_port()
    name = f"chain-{spec or 'none'}".replace(",", "+")
    conf = lab.dir / f"{name}.hcl"
    conf.write_text(gateway_conf(port, lab.backend_port, lab.sse_port, spec))
    out = lab.dir / f"{name}.callgrind"
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p", python_for_gateway(), "-m",
            "a3s_gateway", "--config", str(conf), "--admin", "off"]
    proc = Proc(name, argv, lab.dir / f"{name}.log")
    lab.procs.append(proc)
    wait_listening(proc, port, 180)
    requests_concurrent(port, max(300, 4 * connections), connections)
    dump_total(proc.pid, out, "warm-up")
    requests_concurrent(port, n1, connections)
    first = dump_total(proc.pid, out, f"n{n1}")
    requests_concurrent(port, n2, connections)
    second = dump_total(proc.pid, out, f"n{n2}")
    proc.stop()
    return (second - first) / (n2 - n1)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chains", default=",5", help='comma-separated BENCH_MIDDLEWARES specs ("" = none)')
    ap.add_argument("--n1", type=int, default=1000)
    ap.add_argument("--n2", type=int, default=5000)
    ap.add_argument("--connections", type=int, default=1,
                    help="keep-alive connections in flight together (default 1: one request at a time)")
    args = ap.parse_args(argv)
    missing = [tool for tool in ("valgrind", "callgrind_control", "nginx") if find_tool(tool) is None]
    if missing:
        print(f"missing: {', '.join(missing)} (apt-get install -y valgrind nginx)", file=sys.stderr)
        return 2
    specs = args.chains.split(",")
    results: dict[str, float] = {}
    with Lab(plan_cpus(), log=lambda *a: None) as lab:
        lab.start_backends()
        for spec in specs:
            results[spec] = count(lab, spec, args.n1, args.n2, args.connections)
    base = results.get("")
    print(f"{'chain':<16}{'instructions/request':>22}{'vs none':>10}")
    for spec, value in results.items():
        ratio = f"{value / base:.3f}×" if base else "—"
        print(f"{spec or 'none':<16}{value:>22,.0f}{ratio:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
