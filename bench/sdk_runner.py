"""The official WaveSpeed SDK (``wavespeed`` 2.0.5) as a user would drive it for a batch.

A thread pool of ``--concurrency`` workers; each item: ``wavespeed.upload(path)`` (the SDK's only
upload route: ``POST /api/v3/media/uploads`` then a presigned ``PUT``), ``wavespeed.run(model,
{"image": url})`` (submit, then a poll every ``poll_interval`` = 1 s, the SDK's default), then a
streamed ``httpx`` download of the ``.glb`` to ``DEST/<id>/mesh.glb`` (``.partial`` then rename).

Pointing the SDK elsewhere: it reads ``WAVESPEED_API_KEY`` from the environment at import, but has no
environment variable for the API root — ``wavespeed.config.api.base_url`` must be set in code (or
``wavespeed.Client(api_key=..., base_url=...)``). This runner sets it from ``WAVESPEED_BASE_URL``
(127.0.0.1 only). ``run()`` gets ``timeout=--wait-timeout`` so that its poll loop is bounded (the
SDK's default is to wait forever). The SDK uses ``requests`` without a session: one new TCP
connection per request.

Prints one JSON line like ``bench/baseline.py``. Exit 0 when every item landed.

    uv run python bench/sdk_runner.py MANIFEST.csv --output DEST --concurrency C
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import wavespeed  # type: ignore[import-untyped]
from contender_io import glb_output, mesh_target, read_manifest  # bench/, the script's folder

MODEL = "wavespeed-ai/hunyuan3d/v2-mini"
CHUNK = 1024 * 1024


def download(http: httpx.Client, url: str, target: Path) -> int:
    partial = target.with_name(target.name + ".partial")
    size = 0
    try:
        with http.stream("GET", url) as response:
            response.raise_for_status()
            expected = int(response.headers.get("content-length", "-1"))
            with partial.open("wb") as handle:
                for chunk in response.iter_bytes(CHUNK):
                    handle.write(chunk)
                    size += len(chunk)
        if expected >= 0 and size != expected:
            raise OSError(f"short download: {size} of {expected} bytes")
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(target)
    return size


def one(http: httpx.Client, item_id: str, image: Path, dest: Path, model: str, timeout_s: float) -> None:
    url = wavespeed.upload(str(image))
    result: dict[str, Any] = wavespeed.run(model, {"image": url}, timeout=timeout_s)
    outputs = [str(o) for o in result.get("outputs") or []]
    mesh = glb_output(outputs)
    if mesh is None:
        raise RuntimeError(f"no .glb output: {outputs[:3]}")
    download(http, mesh, mesh_target(dest, item_id))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("manifest", help="CSV with columns id,image (paths relative to the manifest)")
    parser.add_argument("--output", required=True)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--wait-timeout", type=float, default=900.0, help="run(timeout=...) per item")
    args = parser.parse_args(argv)

    started = time.monotonic()
    base_url = os.environ.get("WAVESPEED_BASE_URL", "")
    if urlsplit(base_url).hostname not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"sdk_runner: refusing a non-loopback base URL: {base_url!r}")
    wavespeed.config.api.base_url = base_url
    wavespeed.config.api.api_key = os.environ["WAVESPEED_API_KEY"]
    items = read_manifest(Path(args.manifest))
    dest = Path(args.output)
    dest.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    landed = 0
    lock = threading.Lock()
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    with httpx.Client(limits=limits, timeout=httpx.Timeout(60.0, connect=10.0)) as http:

        def guarded(item_id: str, image: Path) -> None:
            nonlocal landed
            try:
                one(http, item_id, image, dest, args.model, args.wait_timeout)
            except Exception as exc:  # the SDK raises RuntimeError/TimeoutError/ValueError...
                with lock:
                    errors.append(f"{item_id}: {type(exc).__name__}: {str(exc)[:300]}")
                return
            with lock:
                landed += 1

        with ThreadPoolExecutor(max_workers=args.concurrency, thread_name_prefix="sdk") as pool:
            for future in [pool.submit(guarded, item_id, image) for item_id, image in items]:
                future.result()
    summary = {
        "items": len(items),
        "landed": landed,
        "failed": len(errors),
        "errors": errors[:10],
        "polls": None,
        "seconds": round(time.monotonic() - started, 3),
    }
    print(json.dumps(summary), flush=True)
    return 0 if landed == len(items) else 1


if __name__ == "__main__":
    sys.exit(main())
