"""A bounded HTTP load run against a gsv server: requests/s, latency percentiles, time to first
byte and errors per concurrency level. Loopback only; every run stops by itself."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import numpy as np

from gsv_runtime.errors import InputError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class LoadPoint:
    concurrency: int
    requests: int
    errors: int
    wall_s: float
    latency_s: list[float]
    ttfb_s: list[float]

    def summary(self) -> dict[str, Any]:
        def pct(values: list[float], q: float) -> float:
            return float(np.percentile(values, q)) if values else float("nan")

        return {
            "concurrency": self.concurrency,
            "requests": self.requests,
            "errors": self.errors,
            "requests_per_s": (self.requests - self.errors) / self.wall_s,
            "p50_s": pct(self.latency_s, 50),
            "p95_s": pct(self.latency_s, 95),
            "p99_s": pct(self.latency_s, 99),
            "ttfb_p50_s": pct(self.ttfb_s, 50),
            "ttfb_p95_s": pct(self.ttfb_s, 95),
        }


async def _one(client: Any, url: str, body: dict[str, Any]) -> tuple[float, float, bool]:
    start = time.perf_counter()
    ttfb = None
    async with client.stream("POST", url, json=body) as response:
        async for _ in response.aiter_bytes():
            if ttfb is None:
                ttfb = time.perf_counter() - start
        ok = response.status_code == 200
    end = time.perf_counter() - start
    return end, ttfb if ttfb is not None else end, ok


async def _point(base: str, body: dict[str, Any], concurrency: int, requests: int) -> LoadPoint:
    import httpx

    latency: list[float] = []
    ttfb: list[float] = []
    errors = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)

    async def worker(client: Any) -> None:
        nonlocal errors
        while not queue.empty():
            i = queue.get_nowait()
            try:
                total, first, ok = await _one(client, f"{base}/tts", {**body, "seed": i})
            except httpx.HTTPError:
                errors += 1
                continue
            if ok:
                latency.append(total)
                ttfb.append(first)
            else:
                errors += 1

    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=600) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return LoadPoint(concurrency, requests, errors, time.perf_counter() - start, latency, ttfb)


def run_load(
    url: str,
    voice: str,
    concurrency: Sequence[int] = (1, 8, 32),
    requests_per_client: int = 2,
    text: str = "The morning train was late again, and everyone checked the time.",
    lang: str = "en",
    streaming_mode: int = 1,
) -> list[dict[str, Any]]:
    """One bounded point per concurrency level (``requests_per_client`` × N requests each);
    ``streaming_mode`` as api_v2 (0 whole file, 1 per segment, 2/3 token windows).

    Raises:
        InputError: a URL that is not on this machine's loopback.
    """
    host = urlparse(url).hostname
    if host not in LOOPBACK:
        raise InputError(f"load runs target this machine only (127.0.0.1/localhost), not {host}")
    body = {
        "text": text,
        "text_lang": lang,
        "voice": voice,
        "media_type": "wav",
        "streaming_mode": streaming_mode,
    }
    out = []
    for n in concurrency:
        point = asyncio.run(_point(url.rstrip("/"), body, n, n * requests_per_client))
        out.append(point.summary())
    return out


def load_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of :func:`run_load`'s rows."""
    lines = [
        "| clients | requests | errors | req/s | p50 | p95 | p99 | TTFB p50 | TTFB p95 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['concurrency']} | {r['requests']} | {r['errors']} | {r['requests_per_s']:.2f} "
            f"| {r['p50_s']:.2f} s | {r['p95_s']:.2f} s | {r['p99_s']:.2f} s "
            f"| {r['ttfb_p50_s']:.2f} s | {r['ttfb_p95_s']:.2f} s |"
        )
    return "\n".join(lines)
