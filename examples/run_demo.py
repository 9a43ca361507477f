"""`make run`: start the demo LLM backends named by a config's servers, then the gateway on that config.

    python examples/run_demo.py examples/quickstart.hcl

Backends run as child processes and are stopped when the gateway exits (Ctrl-C).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    config = sys.argv[1] if len(sys.argv) > 1 else str(HERE / "quickstart.hcl")
    ports = sorted({int(p) for p in re.findall(r'url\s*=\s*"http://127\.0\.0\.1:(\d+)"', Path(config).read_text())})
    children = [
        subprocess.Popen([sys.executable, str(HERE / "demo_backend.py"), "--port", str(p), "--name", f"backend-{p}"])
        for p in ports
    ]
    time.sleep(0.3)
    print(f"demo backends on ports {', '.join(map(str, ports))}; starting a3s-gateway -c {config}", flush=True)
    print("try:  curl -N http://127.0.0.1:8080/v1/chat/completions -d '{\"stream\": true}'", flush=True)
    gateway = subprocess.Popen([sys.executable, "-m", "a3s_gateway", "-c", config])
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
