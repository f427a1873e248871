"""HTTP jobs: one pooled aiohttp session per run, statuses checked, failures classed.

A failure is retryable when a retry may help: connection errors, timeouts, 5xx, 408 and
429. A 429 or 503 with ``Retry-After`` sets the least delay before the retry.
"""

from __future__ import annotations

import email.utils
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import aiohttp

RETRYABLE_STATUSES = frozenset({408, 429})
#: response text kept in a result or an error message
TEXT_LIMIT = 64 * 1024


class HttpStatusError(Exception):
    """The response's status was not one the job expects."""

    def __init__(self, method: str, url: str, status: int, body: str,
                 retry_after_s: float | None) -> None:
        snippet = body.strip().replace("\n", " ")[:200]
        super().__init__(f"{method} {url} answered {status}" + (f": {snippet}" if snippet else ""))
        self.status = status
        self.retryable = status >= 500 or status in RETRYABLE_STATUSES
        self.retry_after_s = retry_after_s


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class HttpClient:
    """Makes the requests of one run through one connection pool.

    :param limit: most connections open at once (0: no bound; named limits bound jobs)
    """

    def __init__(self, *, limit: int = 0) -> None:
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None

    async def request(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        data: str | None = None,
        headers: Mapping[str, str] | None = None,
        expect: Sequence[int] | None = None,
    ) -> dict[str, Any]:
        """Make one request.

        :returns: ``{"status": 200, "json": ...}`` for a JSON body, else
            ``{"status": 200, "text": ...}``
        :raises HttpStatusError: for a status outside ``expect`` (default: any 2xx)
        :raises aiohttp.ClientError: for connection failures (retryable)
        """
        if self._session is None:
            # imported with the first request, not with the client: a runner whose loop
            # processes make the requests never needs aiohttp (~100 ms)
            import aiohttp

            connector = aiohttp.TCPConnector(limit=self._limit)
            self._session = aiohttp.ClientSession(connector=connector)
        async with self._session.request(
            method, url, json=json, data=data, headers=headers or None
        ) as resp:
            ok = resp.status in expect if expect else 200 <= resp.status < 300
            if resp.content_type == "application/json" and ok:
                return {"status": resp.status, "json": await resp.json()}
            text = (await resp.text(errors="replace"))[:TEXT_LIMIT]
            if not ok:
                raise HttpStatusError(
                    method, url, resp.status, text,
                    parse_retry_after(resp.headers.get("Retry-After")),
                )
            return {"status": resp.status, "text": text}

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
