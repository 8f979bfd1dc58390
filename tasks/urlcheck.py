"""A cheap look at http(s) image URLs before paying: WaveSpeed bills a submit whose image it then
cannot download (it fails the prediction with code 1402), so a URL that answers 404 is caught here.

Only a definite "no" from the server (a 4xx) rejects a URL; a network error or a 5xx proves nothing
(the URL may be reachable from WaveSpeed only), so the caller only warns. No API key is ever sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

import httpx

from tasks import __version__

URL_CHECK_TIMEOUT_S = 5.0
URL_CHECK_CONCURRENCY = 16
# HEAD answers that a 1-byte GET confirms: some servers refuse HEAD (405, 501), and presigned URLs
# are signed for GET only, so their HEAD is refused (403) while the GET works.
CONFIRM_WITH_GET = frozenset({403, 405, 501})
# 4xx answers that say nothing about the URL itself.
NOT_A_VERDICT = frozenset({408, 429})


@dataclass(frozen=True)
class UrlCheck:
    status: int | None = None
    """The HTTP status of the answer; None when there was none."""
    error: str | None = None
    """Why there was no answer (DNS, refused, timeout, TLS...)."""

    @property
    def rejected(self) -> bool:
        """The server said the URL cannot be fetched: WaveSpeed would fail the prediction."""
        return self.status is not None and 400 <= self.status < 500 and self.status not in NOT_A_VERDICT

    @property
    def doubtful(self) -> str | None:
        """Why the URL could not be confirmed, when it was neither confirmed nor rejected."""
        if self.error is not None:
            return self.error
        if self.status is not None and self.status >= 400 and not self.rejected:
            return f"HTTP {self.status}"
        return None


async def _check(client: httpx.AsyncClient, url: str) -> UrlCheck:
    try:
        response = await client.head(url)
        if response.status_code in CONFIRM_WITH_GET:
            async with client.stream("GET", url, headers={"Range": "bytes=0-0"}) as response:
                pass  # the status is all we want; the body (whole, if Range is ignored) is not read
    except httpx.HTTPError as exc:
        return UrlCheck(error=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    return UrlCheck(status=response.status_code)


async def check_urls(
    urls: Iterable[str],
    *,
    timeout_s: float = URL_CHECK_TIMEOUT_S,
    concurrency: int = URL_CHECK_CONCURRENCY,
) -> dict[str, UrlCheck]:
    """Each distinct URL asked once (HEAD, or a ranged GET where HEAD is refused), a few at a time."""
    unique = list(dict.fromkeys(urls))
    if not unique:
        return {}
    limit = asyncio.Semaphore(concurrency)
    headers = {"User-Agent": f"prefect-hunyuan3d/{__version__} (image URL check)"}
    async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=True, headers=headers) as client:

        async def one(url: str) -> tuple[str, UrlCheck]:
            async with limit:
                return url, await _check(client, url)

        return dict(await asyncio.gather(*(one(url) for url in unique)))
