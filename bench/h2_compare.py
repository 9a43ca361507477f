"""HTTP/2 downstream: the gateway against nginx with h2load, same HTTP/1.1 backend, one run, ratio printed.

    .venv/bin/python bench/h2_compare.py --requests 20000 --clients 8 --streams 10 --repeat 3

Both proxies listen h2c (prior knowledge) on 127.0.0.1 and proxy to the same nginx backend (128-byte answers, keep-
alive upstream); one worker each, pinned like bench/load_compare.py. Runs alternate nginx, gateway, nginx, gateway…;
the medians of requests/s and the gateway/nginx ratio are printed.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _peers import (
    Proc,
    ensure_tools,
    free_port,
    gateway_command,
    nginx_backend_conf,
    pinned,
    plan_cpus,
    wait_listening,
)

ROOT = Path(__file__).resolve().parent.parent


def nginx_h2_proxy_conf(d: Path, port: int, backend: int) -> str:
    return f"""
worker_processes 1;
daemon off;
pid {d}/proxy.pid;
error_log {d}/proxy-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};
  upstream b {{ server 127.0.0.1:{backend}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port} http2;
    http2_max_concurrent_streams 250;
    keepalive_requests 1000000;
    location / {{ proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
"""


def h2load(h2load_bin: str, port: int, n: int, c: int, m: int, cpus: list[int]) -> float:
    out = subprocess.run(pinned([h2load_bin, "-n", str(n), "-c", str(c), "-m", str(m), f"http://127.0.0.1:{port}/small"],
                                cpus), capture_output=True, text=True, timeout=300).stdout
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    rate = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    if not done or not rate or done.group(1) != done.group(2) or int(done.group(2)) != n:
        raise RuntimeError(f"h2load failed:\n{out}")
    return float(rate.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--streams", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    tools = ensure_tools(["nginx", "h2load"])
    nginx, h2load_bin = tools["nginx"], tools["h2load"]
    if nginx is None or h2load_bin is None:
        raise SystemExit("nginx and h2load are needed: apt-get install -y nginx nghttp2-client")
    cpus = plan_cpus()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        backend_port, nginx_port, gw_port = free_port(), free_port(), free_port()
        (d / "backend-body").mkdir()
        (d / "backend-proxy").mkdir()
        (d / "backend.conf").write_text(nginx_backend_conf(d, backend_port, 1, 4096))
        (d / "proxy.conf").write_text(nginx_h2_proxy_conf(d, nginx_port, backend_port))
        (d / "gw.hcl").write_text(f'''
entrypoints "web" {{ address = "127.0.0.1:{gw_port}" }}
routers "r" {{
  rule    = "PathPrefix(`/`)"
  service = "b"
}}
services "b" {{
  load_balancer {{ servers = [{{ url = "http://127.0.0.1:{backend_port}" }}] }}
}}
''')
        gateway_argv, gateway_env, _ = gateway_command()  # $A3S_GATEWAY_CMD (another build) or this checkout's
        procs = [
            Proc("backend", pinned([nginx, "-c", str(d / "backend.conf")], cpus.backend), d / "backend.log"),
            Proc("nginx", pinned([nginx, "-c", str(d / "proxy.conf")], cpus.proxy), d / "nginx.log"),
            Proc("gateway", pinned([*gateway_argv, "-c", str(d / "gw.hcl"), "--admin", "off", "--log-level", "warning"],
                                   cpus.proxy), d / "gw.log", gateway_env),
        ]
        try:
            for proc, port in zip(procs, (backend_port, nginx_port, gw_port), strict=True):
                wait_listening(proc, port, 30)
            for port in (nginx_port, gw_port):  # warm-up
                h2load(h2load_bin, port, 2000, a.clients, a.streams, cpus.client)
            rates: dict[str, list[float]] = {"nginx": [], "gateway": []}
            for _ in range(a.repeat):
                rates["nginx"].append(h2load(h2load_bin, nginx_port, a.requests, a.clients, a.streams, cpus.client))
                rates["gateway"].append(h2load(h2load_bin, gw_port, a.requests, a.clients, a.streams, cpus.client))
        finally:
            for proc in reversed(procs):
                proc.stop()
    n, g = statistics.median(rates["nginx"]), statistics.median(rates["gateway"])
    print(f"h2load -n {a.requests} -c {a.clients} -m {a.streams}, h2c, 128-byte answers, {a.repeat} runs each "
          f"({cpus.describe()})")
    print(f"  nginx   {n:,.0f} req/s  (runs: {', '.join(f'{r:,.0f}' for r in rates['nginx'])})")
    print(f"  gateway {g:,.0f} req/s  (runs: {', '.join(f'{r:,.0f}' for r in rates['gateway'])})")
    print(f"  gateway/nginx: {g / n:.2f}x")


if __name__ == "__main__":
    main()
