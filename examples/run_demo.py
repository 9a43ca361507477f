"""`make run`: the gateway on an example configuration, with the demo model servers it needs.

    python examples/run_demo.py [examples/quickstart.hcl]     (make run CONFIG=examples/readme-quickstart.hcl)

Model servers named by the configuration's static ``servers`` on 127.0.0.1 are started here as child processes
(examples/demo_backend.py); replicas of a ``process`` executor are started by the gateway itself, on demand. A
configuration that reads ``${JWT_SECRET}`` gets a demo secret when none is set, and a token is printed for it.
Ctrl-C stops the gateway (graceful drain), then the model servers.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEMO_SECRET = "demo-secret-for-make-run-only-0123456789"


def _certificates(config: Path, text: str) -> None:
    """Make the localhost certificate a configuration names under certs/ when it is missing (never committed)."""
    files = re.findall(r'"(certs/[^"]+\.pem)"', text)
    if not files or all((config.parent / f).is_file() for f in files):
        return
    from a3s_gateway.proxy.tls import generate_self_signed

    cert, key = generate_self_signed()
    for name in files:
        path = config.parent / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(key if "key" in Path(name).name else cert)
    print(f"made a self-signed certificate for localhost: {', '.join(files)}", flush=True)


def _hints(config: Path, text: str, env: dict[str, str]) -> list[str]:
    port = re.search(r'address\s*=\s*"[^"]*:(\d+)"', text)
    base = f"http://127.0.0.1:{port.group(1) if port else '8080'}"
    auth = token = ""
    if "${JWT_SECRET}" in text:
        import jwt

        token = jwt.encode({"sub": "demo", "exp": int(time.time()) + 86400}, env["JWT_SECRET"], algorithm="HS256")
        auth = f" -H 'Authorization: Bearer {token}'"
    own = [line[len("# try: "):].replace("{TOKEN}", token) for line in text.splitlines() if line.startswith("# try: ")]
    if own:  # the configuration says what to try
        return [f"a3s-gateway on {config.name}: try, in another terminal:", *(f"  {line}" for line in own)]
    lines = [
        f"a3s-gateway on {config.name}: try, in another terminal:",
        f"  streaming:     curl -N{auth} {base}/v1/chat/completions -d '{{\"stream\": true}}'",
        f"  rate limiting: for i in $(seq 15); do curl -s -o /dev/null -w '%{{http_code}} '{auth} {base}/v1/models;"
        " done; echo",
        "  replicas:      curl -s http://127.0.0.1:9901/api/gateway/services",
        "  metrics:       curl -s http://127.0.0.1:9901/metrics | grep gateway_",
    ]
    if 'executor              = "process"' in text or re.search(r'executor\s*=\s*"process"', text):
        lines.insert(1, "  (no model runs yet: the first request starts one and waits for it — scale from zero;"
                        " it stops after the scale-down delay without requests)")
    return lines


def main() -> int:
    config = Path(sys.argv[1] if len(sys.argv) > 1 else HERE / "quickstart.hcl").resolve()
    text = config.read_text()
    env = {**os.environ, "A3S_DEMO_PYTHON": sys.executable}
    if "${JWT_SECRET}" in text and not env.get("JWT_SECRET"):
        env["JWT_SECRET"] = DEMO_SECRET
    _certificates(config, text)
    ports = sorted({int(p) for p in re.findall(r'url\s*=\s*"http://127\.0\.0\.1:(\d+)"', text)})
    children = [
        subprocess.Popen([sys.executable, str(HERE / "demo_backend.py"), "--port", str(p), "--name", f"backend-{p}"])
        for p in ports
    ]
    if ports:
        print(f"demo model servers on ports {', '.join(map(str, ports))}", flush=True)
    print("\n".join(_hints(config, text, env)), flush=True)
    gateway = subprocess.Popen([sys.executable, "-m", "a3s_gateway", "-c", str(config)], env=env)
    try:
        return gateway.wait()
    except KeyboardInterrupt:
        gateway.send_signal(signal.SIGINT)
        return gateway.wait()
    finally:
        for child in children:
            child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()


if __name__ == "__main__":
    sys.exit(main())
