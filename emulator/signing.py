"""S3-style presigned output URLs of the realistic profile: `/cdn/o/<name>?X-Amz-...&X-Amz-Signature=<hex>`.

The signature is an HMAC-SHA256, under a key only this emulator instance knows, over the name, the
signing time and the lifetime; a download must present all three unchanged and before
`X-Amz-Date + X-Amz-Expires`.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from enum import Enum
from urllib.parse import urlencode

SIGNED_PREFIX = "/cdn/o/"
_ALGORITHM = "AWS4-HMAC-SHA256"
_DATE_FORMAT = "%Y%m%dT%H%M%SZ"


class Verdict(Enum):
    VALID = "valid"
    DENIED = "denied"
    """Signature absent or not ours (or the signed fields were changed)."""
    EXPIRED = "expired"


class UrlSigner:
    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)

    def _signature(self, name: str, date: str, expires: str) -> str:
        message = f"{name}\n{date}\n{expires}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def sign(self, base_url: str, name: str, ttl_s: int, now: float | None = None) -> str:
        """The URL of output `name`, valid for `ttl_s` seconds from `now` (default: the current time)."""
        date = time.strftime(_DATE_FORMAT, time.gmtime(time.time() if now is None else now))
        expires = str(max(0, int(ttl_s)))
        query = urlencode(
            {
                "X-Amz-Algorithm": _ALGORITHM,
                "X-Amz-Date": date,
                "X-Amz-Expires": expires,
                "X-Amz-Signature": self._signature(name, date, expires),
            }
        )
        return f"{base_url}{SIGNED_PREFIX}{name}?{query}"

    def check(self, name: str, query: Mapping[str, str], now: float | None = None) -> Verdict:
        date, expires = query.get("X-Amz-Date", ""), query.get("X-Amz-Expires", "")
        given = query.get("X-Amz-Signature", "")
        if not hmac.compare_digest(given.encode(), self._signature(name, date, expires).encode()):
            return Verdict.DENIED
        signed_at = calendar.timegm(time.strptime(date, _DATE_FORMAT))
        current = time.time() if now is None else now
        return Verdict.EXPIRED if current >= signed_at + int(expires) else Verdict.VALID
