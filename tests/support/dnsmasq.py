"""A local authoritative DNS server for the DNS provider tests: dnsmasq on 127.0.0.1, answering for ``a3s.test``.

A/AAAA records live in a hosts directory that dnsmasq watches (inotify): :meth:`Dnsmasq.set` rewrites a name's
records and the next query sees them. Names of ``a3s.test`` without records answer NXDOMAIN; every answer carries
the TTL given at start; SRV records and names that answer REFUSED (a server failure to the resolver) are fixed per
start (:meth:`Dnsmasq.restart` changes them), as is an authoritative zone (``auth``: SOA and NS records, the name
server's A record). Missing dnsmasq: skip, or fail under A3S_REQUIRE_SERVICES=1
(``make services`` installs it).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import dns.exception
import dns.message
import dns.query
from external import require_tool


def _free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (dnsmasq listens on both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


class _PortTaken(RuntimeError):
    pass


class Dnsmasq:
    def __init__(self, root: Path, ttl: int = 1) -> None:
        # /usr/sbin is not on every user's PATH
        sbin = "/usr/sbin/dnsmasq"
        self.binary = sbin if os.access(sbin, os.X_OK) else require_tool("dnsmasq", "dnsmasq-base")
        self.root = root
        self.hosts = root / "hosts"
        self.hosts.mkdir(parents=True, exist_ok=True)
        self.ttl = ttl
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.srv: list[str] = []  # "_http._tcp.a3s.test,target,port,priority,weight"
        self.refused: list[str] = []  # domains answered with REFUSED
        #: (zone, name server name): answer for ``zone`` authoritatively (SOA, NS = that name at 127.0.0.1)
        self.auth: tuple[str, str] | None = None

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    def set(self, name: str, *addresses: str) -> None:
        """Make ``name`` resolve to ``addresses`` (none: NXDOMAIN); atomic, picked up by dnsmasq's inotify."""
        path = self.hosts / name
        if not addresses:
            path.unlink(missing_ok=True)
            return
        tmp = self.root / f"{name}.tmp"
        tmp.write_text("".join(f"{a} {name}\n" for a in addresses))
        os.replace(tmp, path)

    def start(self) -> Dnsmasq:
        for _ in range(5):  # the port may be taken between choosing it and dnsmasq binding it: choose another
            try:
                return self._start()
            except _PortTaken:
                self.port = _free_port()
        return self._start()

    def _start(self) -> Dnsmasq:
        args = [self.binary, "-k", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--bind-interfaces",
                "--listen-address=127.0.0.1", f"--port={self.port}", f"--hostsdir={self.hosts}",
                f"--local-ttl={self.ttl}", "--local=/a3s.test/", "--user=root", "--pid-file=",
                f"--log-facility={self.root / 'dnsmasq.log'}"]
        args += [f"--srv-host={s}" for s in self.srv] + [f"--server=/{d}/#" for d in self.refused]
        if self.auth is not None:
            zone, ns = self.auth
            args += [f"--auth-server={ns},127.0.0.1", f"--auth-zone={zone}", f"--host-record={ns},127.0.0.1",
                     f"--auth-ttl={self.ttl}"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # answering yet?
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                if "Address already in use" in err:
                    raise _PortTaken(err)
                raise RuntimeError(f"dnsmasq exited: {err}")
            try:
                dns.query.udp(dns.message.make_query("probe.a3s.test", "A"), "127.0.0.1", port=self.port,
                              timeout=0.2)
                return self
            except (OSError, dns.exception.Timeout):
                time.sleep(0.05)
        raise RuntimeError("dnsmasq did not answer within 5 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        """Stop and start again on the same port (the gateway under test was configured with it)."""
        self.stop()
        for _ in range(20):
            try:
                self._start()
                return
            except _PortTaken:
                time.sleep(0.1)
        self._start()
