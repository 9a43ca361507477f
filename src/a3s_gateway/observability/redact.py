"""URL redaction (SPEC §11.1): what the admin API and the process log may show of a URL that can carry credentials.

``redis://:pw@host/0?password=x``, ``https://auth:tok@sso/check?token=t`` and their like are shown with the userinfo
password and the values of credential-named query parameters replaced by ``<redacted>``; everything else — scheme,
user name, host, port, path, the other parameters, the fragment — is kept exactly as written, so the operator can
still tell which service a URL names.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import unquote_plus

__all__ = ["CREDENTIAL_PARAMS", "REDACTED", "redact_url"]

REDACTED: Final = "<redacted>"
#: query parameter names whose values are credentials (compared case-insensitively, after percent-decoding)
CREDENTIAL_PARAMS: Final = frozenset(
    ("password", "pass", "pwd", "token", "key", "secret", "apikey", "api_key", "access_token", "auth")
)


def redact_url(url: str) -> str:
    """``url`` with its userinfo password and credential query values replaced by ``<redacted>``.

    Works on the text as written (no parsing that could fail or re-encode): a string that is not a URL comes back
    unchanged unless it has an ``@`` before its path or a ``?`` query, which are then redacted the same way.
    """
    rest, hash_, fragment = url.partition("#")
    rest, question, query = rest.partition("?")
    scheme, sep, after = rest.partition("://")
    if not sep:
        scheme, after = "", rest
    slash = after.find("/")
    authority, path = (after, "") if slash < 0 else (after[:slash], after[slash:])
    userinfo, at, hostport = authority.rpartition("@")
    if at:
        user, colon, password = userinfo.partition(":")
        if colon and password:
            authority = f"{user}:{REDACTED}@{hostport}"
    if question and query:
        query = _redact_query(query)
    return f"{scheme}{sep}{authority}{path}{question}{query}{hash_}{fragment}"


def _redact_query(query: str) -> str:
    parts = query.split("&")
    changed = False
    for i, part in enumerate(parts):
        name, eq, value = part.partition("=")
        if eq and value and unquote_plus(name).lower() in CREDENTIAL_PARAMS:
            parts[i] = f"{name}={REDACTED}"
            changed = True
    return "&".join(parts) if changed else query
