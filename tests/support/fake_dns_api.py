"""Small fake DNS provider APIs for DNS-01 tests: Cloudflare's v4 REST API and Route53's REST API (the calls the
gateway makes), each keeping its TXT records and pushing them into pebble-challtestsrv's management API
(``/set-txt``, ``/clear-txt``) so that pebble, which resolves through challtestsrv, sees them.

Both serve one zone (``zone``) on 127.0.0.1 in a thread; ``calls`` records (method, path) for assertions and
``authorization`` the last Authorization header. ``delay`` (Cloudflare) makes an added record appear in DNS that many
seconds after the API call, as with a provider whose name servers lag behind its API."""

from __future__ import annotations

import http.server
import json
import re
import threading
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from typing import Any

R53 = "https://route53.amazonaws.com/doc/2013-04-01/"


class _Api:
    def __init__(self, zone: str, challtestsrv: str, token: str = "", delay: float = 0.0) -> None:
        self.zone = zone
        self.challtestsrv = challtestsrv  # http://127.0.0.1:<management port>
        self.token = token
        self.delay = delay  # seconds between an API call that adds a record and its appearance in DNS
        self.records: dict[str, list[str]] = {}  # fqdn -> TXT values
        self.calls: list[tuple[str, str]] = []
        self.authorization = ""
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _do(self) -> None:
                size = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(size) if size else b""
                api.calls.append((self.command, self.path))
                api.authorization = self.headers.get("Authorization", "")
                status, ctype, data = api.handle(self.command, self.path, self.headers, body)
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _do

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def handle(self, method: str, path: str, headers: Any, body: bytes) -> tuple[int, str, bytes]:
        raise NotImplementedError

    def _added(self, fqdn: str) -> None:
        """A value of ``fqdn`` was added: challtestsrv serves it now, or ``delay`` seconds later (a provider whose
        name servers lag behind its API)."""
        if not self.delay:
            self._sync(fqdn)
            return
        timer = threading.Timer(self.delay, self._sync, (fqdn,))
        timer.daemon = True
        timer.start()

    def _sync(self, fqdn: str) -> None:
        """challtestsrv holds the values of ``fqdn``: cleared, then each set again."""
        self._challtest("/clear-txt", {"host": fqdn + "."})
        for value in self.records.get(fqdn, []):
            self._challtest("/set-txt", {"host": fqdn + ".", "value": value})

    def _challtest(self, path: str, data: dict[str, str]) -> None:
        request = urllib.request.Request(self.challtestsrv + path, data=json.dumps(data).encode(), method="POST")
        urllib.request.urlopen(request, timeout=5).read()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class FakeCloudflare(_Api):
    """``GET /zones?name=``, ``GET|POST /zones/<id>/dns_records``, ``DELETE /zones/<id>/dns_records/<id>``."""

    ZONE_ID = "zone-1"

    def handle(self, method: str, path: str, headers: Any, body: bytes) -> tuple[int, str, bytes]:
        if headers.get("Authorization") != f"Bearer {self.token}":
            return self._reply(403, {"success": False, "errors": [{"code": 9109, "message": "Invalid token"}]})
        url = urllib.parse.urlsplit(path)
        query = dict(urllib.parse.parse_qsl(url.query))
        if url.path == "/zones":
            found = [{"id": self.ZONE_ID, "name": self.zone}] if query.get("name") == self.zone else []
            return self._reply(200, {"success": True, "result": found})
        records = f"/zones/{self.ZONE_ID}/dns_records"
        if url.path == records and method == "POST":
            record = json.loads(body)
            self.records.setdefault(record["name"], []).append(record["content"])
            self._added(record["name"])
            return self._reply(200, {"success": True, "result": {"id": f"{record['name']}|{record['content']}"}})
        if url.path == records and method == "GET":
            found = [{"id": f"{name}|{v}", "name": name, "type": "TXT", "content": v}
                     for name, values in self.records.items() if name == query.get("name") for v in values]
            return self._reply(200, {"success": True, "result": found})
        if url.path.startswith(records + "/") and method == "DELETE":
            name, _, value = urllib.parse.unquote(url.path[len(records) + 1:]).partition("|")
            self.records.get(name, []).remove(value)
            self._sync(name)
            return self._reply(200, {"success": True, "result": {"id": "x"}})
        return self._reply(404, {"success": False, "errors": [{"message": "not found"}]})

    @staticmethod
    def _reply(status: int, body: dict[str, Any]) -> tuple[int, str, bytes]:
        return status, "application/json", json.dumps(body).encode()


class FakeRoute53(_Api):
    """``ListHostedZonesByName``, ``ListResourceRecordSets``, ``ChangeResourceRecordSets`` (UPSERT/DELETE);
    requests must carry a SigV4 Authorization for ``access_key``."""

    ZONE_ID = "Z0FAKE"

    def __init__(self, zone: str, challtestsrv: str, access_key: str) -> None:
        super().__init__(zone, challtestsrv)
        self.access_key = access_key

    def handle(self, method: str, path: str, headers: Any, body: bytes) -> tuple[int, str, bytes]:
        auth = headers.get("Authorization", "")
        if not re.match(rf"AWS4-HMAC-SHA256 Credential={self.access_key}/\d{{8}}/[\w-]+/route53/aws4_request, "
                        r"SignedHeaders=[\w;-]+, Signature=[0-9a-f]{64}$", auth) or not headers.get("X-Amz-Date"):
            return 403, "text/xml", b"<ErrorResponse><Error><Code>AccessDenied</Code></Error></ErrorResponse>"
        url = urllib.parse.urlsplit(path)
        query = dict(urllib.parse.parse_qsl(url.query))
        if url.path == "/2013-04-01/hostedzonesbyname":
            zones = ""
            if query.get("dnsname") == self.zone:
                zones = (f"<HostedZone><Id>/hostedzone/{self.ZONE_ID}</Id><Name>{self.zone}.</Name></HostedZone>")
            return 200, "text/xml", (f'<ListHostedZonesByNameResponse xmlns="{R53}"><HostedZones>{zones}'
                                     "</HostedZones></ListHostedZonesByNameResponse>").encode()
        rrset = f"/2013-04-01/hostedzone/{self.ZONE_ID}/rrset"
        if url.path == rrset and method == "GET":
            name = query.get("name", "").rstrip(".")
            sets = ""
            if self.records.get(name):
                values = "".join(f"<ResourceRecord><Value>\"{v}\"</Value></ResourceRecord>" for v in self.records[name])
                sets = (f"<ResourceRecordSet><Name>{name}.</Name><Type>TXT</Type><TTL>120</TTL>"
                        f"<ResourceRecords>{values}</ResourceRecords></ResourceRecordSet>")
            return 200, "text/xml", (f'<ListResourceRecordSetsResponse xmlns="{R53}"><ResourceRecordSets>{sets}'
                                     "</ResourceRecordSets></ListResourceRecordSetsResponse>").encode()
        if url.path.rstrip("/") == rrset and method == "POST":
            tree = ET.fromstring(body)
            for change in tree.iter(f"{{{R53}}}Change"):
                action = change.findtext(f"{{{R53}}}Action")
                name = (change.findtext(f".//{{{R53}}}Name") or "").rstrip(".")
                values = [(v.text or "").strip('"') for v in change.iter(f"{{{R53}}}Value")]
                self.records[name] = values if action == "UPSERT" else []
                self._sync(name)
            return 200, "text/xml", (f'<ChangeResourceRecordSetsResponse xmlns="{R53}"><ChangeInfo>'
                                     "<Id>/change/C1</Id><Status>INSYNC</Status></ChangeInfo>"
                                     "</ChangeResourceRecordSetsResponse>").encode()
        return 404, "text/xml", b"<ErrorResponse/>"
