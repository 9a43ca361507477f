"""URL redaction (SPEC §11.1): userinfo password and credential-named query values become ``<redacted>``."""

from __future__ import annotations

import pytest

from a3s_gateway.http.client import Target
from a3s_gateway.observability.redact import CREDENTIAL_PARAMS, redact_url

VECTORS = [
    # userinfo: the password goes, the user name stays
    ("redis://:s3cret@redis:6379/0", "redis://:<redacted>@redis:6379/0"),
    ("redis://app:s3cret@redis:6379/0", "redis://app:<redacted>@redis:6379/0"),
    ("https://u:p%40ss@auth.local/check", "https://u:<redacted>@auth.local/check"),
    ("http://user@[::1]:8080/x", "http://user@[::1]:8080/x"),  # no password: nothing to hide
    ("http://user:@h/", "http://user:@h/"),
    # credential-named query parameters, any case, percent-encoded names too
    ("redis://redis:6379/0?password=s3cret", "redis://redis:6379/0?password=<redacted>"),
    ("https://sso/check?token=t0k&next=/home", "https://sso/check?token=<redacted>&next=/home"),
    ("https://idp/jwks?API_KEY=k&Access_Token=a&x=1#frag",
     "https://idp/jwks?API_KEY=<redacted>&Access_Token=<redacted>&x=1#frag"),
    ("http://h/?api%5Fkey=k", "http://h/?api%5Fkey=<redacted>"),
    ("http://h/?pass=1&pwd=2&key=3&secret=4&apikey=5&auth=6",
     "http://h/?pass=<redacted>&pwd=<redacted>&key=<redacted>&secret=<redacted>&apikey=<redacted>&auth=<redacted>"),
    # look-alike names are not credentials; empty values and bare names have nothing to hide
    ("http://h/?monkey=1&token_type=bearer&tokens=2", "http://h/?monkey=1&token_type=bearer&tokens=2"),
    ("http://h/?token=&token", "http://h/?token=&token"),
    # both at once, and a URL with neither, unchanged byte for byte
    ("https://a:b@h:1/p/q?x=%20&secret=z", "https://a:<redacted>@h:1/p/q?x=%20&secret=<redacted>"),
    ("http://127.0.0.1:4318", "http://127.0.0.1:4318"),
    ("unix:///run/redis.sock?password=pw&db=1", "unix:///run/redis.sock?password=<redacted>&db=1"),
    ("", ""),
]


@pytest.mark.parametrize(("url", "shown"), VECTORS)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_every_listed_parameter_name_is_a_credential() -> None:
    assert {"password", "pass", "pwd", "token", "key", "secret", "apikey", "api_key", "access_token",
            "auth"} == CREDENTIAL_PARAMS
    for name in CREDENTIAL_PARAMS:
        assert redact_url(f"http://h/?{name.upper()}=v") == f"http://h/?{name.upper()}=<redacted>"


def test_client_target_shows_the_redacted_url_and_sends_the_real_one() -> None:
    target = Target("https://svc:pw@auth.local:8443/verify?token=t0k&x=1")
    assert target.url == "https://svc:<redacted>@auth.local:8443/verify?token=<redacted>&x=1"
    assert target.target == b"/verify?token=t0k&x=1" and target.host == "auth.local" and target.port == 8443
    with pytest.raises(ValueError) as info:
        Target("ftp://u:pw@h/?token=t0k")
    assert "pw" not in str(info.value) and "t0k" not in str(info.value)
