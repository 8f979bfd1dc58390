"""Expert baseline: what a careful engineer writes without a framework — plain asyncio + httpx.

For every manifest row, under a semaphore of ``--concurrency``: upload the image
(``POST /api/v3/media/upload/binary``, as the flow does by default), submit, poll until terminal,
then stream the ``.glb`` to ``DEST/<id>/mesh.glb`` (written to ``.partial``, length checked against
``Content-Length``, renamed). One ``httpx.AsyncClient`` with keep-alive, at most C connections.

Polling: a growing interval (first poll after ``--poll-initial`` s, ×``--poll-backoff`` per poll,
capped at ``--poll-max``; the bench passes the flow's ``WAVESPEED_POLL_*`` values); ``--poll-backoff 1``
makes it a fixed interval. ``--poll-adaptive`` polls on the project's own schedule instead,
:class:`tasks.polling.PollSchedule` (imported: it is pure scheduling, and the point of the
comparison is the orchestration around the polls, not the policy): the first wave's scouts learn
the model's ``executionTime``, the rest poll on the plan made from it.
Every loop is bounded: polls by ``--wait-timeout``, retries (429/5xx/transport errors on idempotent
requests; a submit only when it certainly was not received: connect errors, 429) by ``--attempts``.

Reads ``WAVESPEED_API_KEY`` and ``WAVESPEED_BASE_URL`` (127.0.0.1 only). Prints one JSON line:
``{"items", "landed", "failed", "errors", "polls", "seconds"}``. Exit 0 when every item landed.

    uv run python bench/baseline.py MANIFEST.csv --output DEST --concurrency C
"""

from __future__ import annotations

import argparse
import asyncio
import json
import mimetypes
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
from contender_io import glb_output, mesh_target, read_manifest  # bench/, the script's folder

from tasks.polling import DurationEstimator, PollSchedule

MODEL = "wavespeed-ai/hunyuan3d/v2-mini"
CHUNK = 1024 * 1024
T = TypeVar("T")


class Transient(Exception):
    """Worth another attempt (429, 5xx, transport error on an idempotent request)."""


class Failed(Exception):
    """The item cannot land (task failed, bad answer, out of attempts)."""


@dataclass(frozen=True)
class PollPolicy:
    initial_s: float
    backoff: float
    maximum_s: float
    timeout_s: float
    adaptive: bool = False


@dataclass
class Counters:
    durations: DurationEstimator  # executionTime of completed predictions, shared by all waits
    polls: int = 0
    landed: int = 0


def schedule_for(policy: PollPolicy, durations: DurationEstimator, submitted: float) -> PollSchedule:
    return PollSchedule(
        durations,
        MODEL if policy.adaptive else None,
        submitted,
        floor=policy.initial_s,
        backoff=policy.backoff,
        ceiling=policy.maximum_s,
    )


def loopback_only(url: str) -> str:
    host = urlsplit(url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"baseline: refusing a non-loopback base URL: {url}")
    return url.rstrip("/")


def data_of(response: httpx.Response) -> dict[str, Any]:
    if response.status_code == 429 or response.status_code >= 500:
        raise Transient(f"HTTP {response.status_code}")
    if response.status_code != 200:
        raise Failed(f"HTTP {response.status_code}: {response.text[:200]}")
    body = response.json()
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        raise Failed(f"answer without data: {response.text[:200]}")
    return data


async def retrying(attempts: int, call: Callable[[], Awaitable[T]], *, safe: bool = True) -> T:
    """Call until it succeeds, at most ``attempts`` times, backing off 0.5, 1, 2... s.
    ``safe=False`` (a submit): only retry when the request certainly did not count."""
    for attempt in range(1, attempts + 1):
        try:
            return await call()
        except (Transient, httpx.TransportError) as exc:
            not_received = isinstance(exc, httpx.ConnectError) or (
                isinstance(exc, Transient) and "429" in str(exc)
            )
            if attempt == attempts or not (safe or not_received):
                raise Failed(f"{type(exc).__name__}: {exc}") from exc
            await asyncio.sleep(min(8.0, 0.5 * 2 ** (attempt - 1)))
    raise AssertionError("unreachable")


async def upload(client: httpx.AsyncClient, path: Path, attempts: int) -> str:
    data = path.read_bytes()
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"

    async def call() -> str:
        response = await client.post(
            "/api/v3/media/upload/binary", files={"file": (path.name, data, content_type)}
        )
        return str(data_of(response)["download_url"])

    return await retrying(attempts, call)


async def submit(client: httpx.AsyncClient, model: str, image_url: str, attempts: int) -> str:
    async def call() -> str:
        return str(data_of(await client.post(f"/api/v3/{model}", json={"image": image_url}))["id"])

    return await retrying(attempts, call, safe=False)


async def wait(
    client: httpx.AsyncClient, pid: str, policy: PollPolicy, attempts: int, counters: Counters
) -> dict[str, Any]:
    submitted = time.monotonic()
    deadline = submitted + policy.timeout_s
    polls, status = 0, "created"

    async def call() -> dict[str, Any]:
        counters.polls += 1
        return data_of(await client.get(f"/api/v3/predictions/{pid}/result"))

    durations = counters.durations
    schedule = schedule_for(policy, durations, submitted)
    try:
        while time.monotonic() < deadline:
            pause = await schedule.next_pause(polls, status, deadline)
            if pause is None:
                continue
            await asyncio.sleep(min(max(pause, 0.0), max(0.0, deadline - time.monotonic())))
            prediction = await retrying(attempts, call)
            polls, status = polls + 1, str(prediction.get("status"))
            if status in ("completed", "failed"):
                execution_ms = prediction.get("executionTime")
                if status == "completed" and isinstance(execution_ms, int | float) and execution_ms > 0:
                    durations.add(MODEL, execution_ms / 1000)
                return prediction
    finally:
        schedule.close()
    raise Failed(f"prediction {pid} not terminal after {policy.timeout_s:g} s")


async def download(client: httpx.AsyncClient, url: str, target: Path, attempts: int) -> int:
    partial = target.with_name(target.name + ".partial")

    async def call() -> int:
        size = 0
        async with client.stream("GET", url) as response:
            if response.status_code != 200:
                await response.aread()
                data_of(response)  # raises Transient or Failed
            expected = int(response.headers.get("content-length", "-1"))
            with partial.open("wb") as handle:
                async for chunk in response.aiter_bytes(CHUNK):
                    handle.write(chunk)
                    size += len(chunk)
        if expected >= 0 and size != expected:
            raise Transient(f"short download: {size} of {expected} bytes")
        return size

    try:
        size = await retrying(attempts, call)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(target)
    return size


async def one(
    client: httpx.AsyncClient,
    item_id: str,
    image: Path,
    dest: Path,
    args: argparse.Namespace,
    policy: PollPolicy,
    counters: Counters,
) -> None:
    url = await upload(client, image, args.attempts)
    pid = await submit(client, args.model, url, args.attempts)
    prediction = await wait(client, pid, policy, args.attempts, counters)
    if prediction.get("status") != "completed":
        raise Failed(f"prediction {pid} failed: {prediction.get('code')} {prediction.get('error')}")
    outputs = [str(o) for o in prediction.get("outputs") or []]
    mesh = glb_output(outputs)
    if mesh is None:
        raise Failed(f"prediction {pid} has no .glb output: {outputs[:3]}")
    await download(client, mesh, mesh_target(dest, item_id), args.attempts)
    counters.landed += 1


async def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    items = read_manifest(Path(args.manifest))
    dest = Path(args.output)
    dest.mkdir(parents=True, exist_ok=True)
    policy = PollPolicy(
        args.poll_initial, args.poll_backoff, args.poll_max, args.wait_timeout, args.poll_adaptive
    )
    counters = Counters(DurationEstimator(floor=policy.initial_s))
    errors: list[str] = []
    limit = asyncio.Semaphore(args.concurrency)
    base_url = loopback_only(os.environ.get("WAVESPEED_BASE_URL", ""))
    headers = {"Authorization": f"Bearer {os.environ['WAVESPEED_API_KEY']}"}
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    timeout = httpx.Timeout(60.0, connect=10.0)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits, timeout=timeout) as api:

        async def guarded(item_id: str, image: Path) -> None:
            async with limit:
                try:
                    await one(api, item_id, image, dest, args, policy, counters)
                except (Failed, OSError, ValueError, KeyError, httpx.HTTPError) as exc:
                    errors.append(f"{item_id}: {type(exc).__name__}: {exc}")

        await asyncio.gather(*(guarded(item_id, image) for item_id, image in items))
    return {
        "items": len(items),
        "landed": counters.landed,
        "failed": len(errors),
        "errors": errors[:10],
        "polls": counters.polls,
        "seconds": round(time.monotonic() - started, 3),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("manifest", help="CSV with columns id,image (paths relative to the manifest)")
    parser.add_argument("--output", required=True, help="local folder: DEST/<id>/mesh.glb")
    parser.add_argument("--concurrency", type=int, default=2, help="items in flight (default 2)")
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--poll-initial", type=float, default=2.0, help="first poll after (s)")
    parser.add_argument("--poll-backoff", type=float, default=1.5, help="interval growth (1 = fixed)")
    parser.add_argument("--poll-max", type=float, default=15.0, help="interval cap (s)")
    parser.add_argument("--poll-adaptive", action="store_true", help="the client's schedule (tasks.polling)")
    parser.add_argument("--wait-timeout", type=float, default=900.0, help="deadline per prediction (s)")
    parser.add_argument("--attempts", type=int, default=6, help="attempts per request (default 6)")
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.poll_initial <= 0 or args.poll_backoff < 1 or args.attempts < 1:
        parser.error("concurrency and attempts >= 1, poll-initial > 0, poll-backoff >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    summary = asyncio.run(run(parse_args(argv)))
    print(json.dumps(summary), flush=True)
    return 0 if summary["landed"] == summary["items"] else 1


if __name__ == "__main__":
    sys.exit(main())
