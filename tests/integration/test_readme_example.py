"""The Python API example of README.md runs as written (ports moved to free ones, the final wait replaced)."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_readme_python_example_runs(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    script = next(b for b in blocks if "asyncio.run(main())" in b)
    assert "await gateway.wait_for_shutdown()" in script
    script = script.replace("await gateway.wait_for_shutdown()", "await gateway.shutdown()")
    script = script.replace("127.0.0.1:8080", f"127.0.0.1:{free_port()}")
    script = script.replace("127.0.0.1:8081", f"127.0.0.1:{free_port()}")
    # the admin listener goes to a free port too (the default 9901 may be taken on a developer machine)
    script = script.replace("BASE = '''\n", "BASE = '''\nadmin { address = \"127.0.0.1:0\" }\n", 1)
    path = tmp_path / "example.py"
    path.write_text(script)
    out = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "'alt'" in lines[0] and "'success': True" in lines[0]
    assert lines[1] == ("['gateway_config_reloads_total{result=\"success\"} 1.0', "
                        "'gateway_config_reloads_total{result=\"failure\"} 0.0']")
    assert 'unknown matcher "PathPrefx"' in out.stdout


def test_readme_automatic_https_config_targets_lets_encrypt_staging_and_validates(tmp_path: Path) -> None:
    """The "Automatic HTTPS" block: Let's Encrypt staging, an account email, the storage where the Helm chart
    mounts its volume; ``a3s-gateway validate`` accepts it (the storage moved to a directory this test's user
    can write: validate checks that the gateway can)."""
    import yaml

    from a3s_gateway import GatewayConfig
    from a3s_gateway.config.model import LETSENCRYPT_STAGING

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Automatic HTTPS"):]
    block = re.search(r"```hcl\n(.*?)```", section, re.S)
    assert block is not None
    text = block.group(1)
    tls = GatewayConfig.from_hcl(text, filename="README.md").entrypoints["websecure"].tls
    assert tls is not None and tls.acme and tls.challenge == "http-01"
    assert tls.acme_directory_url == LETSENCRYPT_STAGING == "https://acme-staging-v02.api.letsencrypt.org/directory"
    assert re.fullmatch(r"[^@\s]+@[^@\s]+\.[a-z]+", tls.acme_email)
    values = yaml.safe_load((ROOT / "deploy/helm/a3s-gateway/values.yaml").read_text())
    assert tls.acme_storage_path == values["acmeStorage"]["persistence"]["mountPath"]
    config = tmp_path / "gateway.hcl"
    config.write_text(text.replace(tls.acme_storage_path, str(tmp_path / "acme")))
    done = subprocess.run([sys.executable, "-m", "a3s_gateway", "validate", "-c", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "configuration is valid" in done.stdout
