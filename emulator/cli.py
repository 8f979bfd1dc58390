"""Command-line front end: flags for every switch, and a foreground server (`python -m emulator`)."""

from __future__ import annotations

import argparse
import threading
from typing import Any

from emulator.config import DEFAULT_API_KEY, DEFAULT_PRICE_USD, PROFILES, EmulatorConfig
from emulator.models import MODELS

_DEFAULTS = EmulatorConfig()


def _int_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a rate is between 0 and 1, got {text}")
    return value


def _price(text: str) -> tuple[str | None, float]:
    """`0.05` (every model) or `MODEL=0.05`."""
    model, sep, amount = text.rpartition("=")
    try:
        return (model if sep else None), float(amount)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected PRICE or MODEL=PRICE, got {text!r}") from exc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every emulator switch as a flag (dests prefixed by nothing; see config_from_args)."""
    d = _DEFAULTS
    net = parser.add_argument_group("server")
    net.add_argument("--host", default="127.0.0.1", help="bind address (default %(default)s)")
    net.add_argument("--port", type=int, default=0, help="port; 0 picks a free one (default %(default)s)")
    net.add_argument("--api-key", default=DEFAULT_API_KEY, help="the only accepted Bearer key")
    net.add_argument(
        "--profile",
        choices=PROFILES,
        default=d.profile,
        help="answer shapes: default, or realistic (nulls, object outputs, signed URLs, OBJ zips)",
    )

    account = parser.add_argument_group("account")
    account.add_argument(
        "--price",
        type=_price,
        action="append",
        default=[],
        metavar="[MODEL=]USD",
        help=f"price per prediction, for every model or one (repeatable; default {DEFAULT_PRICE_USD})",
    )
    account.add_argument("--balance", type=float, default=d.balance, help="starting balance in USD")
    account.add_argument(
        "--max-concurrency",
        type=int,
        default=d.max_concurrency,
        help="tasks processing at once; more stay 'created' (<=0: unlimited; default %(default)s)",
    )
    account.add_argument(
        "--max-submits-per-minute", type=int, default=None, help="submit rate limit (429 beyond it)"
    )
    account.add_argument(
        "--discount-rate",
        type=_rate,
        default=None,
        help="discounted_price = price x (1 - rate), billed (default: 0.1 realistic, else 0)",
    )

    work = parser.add_argument_group("processing")
    work.add_argument("--latency", type=float, default=d.latency_s, help="processing seconds")
    work.add_argument("--jitter", type=float, default=d.jitter_s, help="+/- seconds around --latency")
    work.add_argument(
        "--submit-answer-delay",
        type=float,
        default=d.submit_answer_delay_s,
        help="hold each submit's answer up to this many seconds (answers then overtake each other)",
    )
    work.add_argument("--failure-rate", type=_rate, default=d.failure_rate, help="share of tasks that fail")
    work.add_argument(
        "--failure-codes",
        type=_int_tuple,
        default=d.failure_codes,
        metavar="5000,5003",
        help="task error codes to fail with",
    )
    work.add_argument("--image-fetch-timeout", type=float, default=d.image_fetch_timeout_s)
    work.add_argument("--sync-timeout", type=float, default=d.sync_timeout_s, help="enable_sync_mode wait")
    work.add_argument("--mesh-grid", type=int, default=d.mesh_grid, help="vertices along the longer side")
    work.add_argument(
        "--mesh-texture-px", type=int, default=d.mesh_texture_px, help="the texture's longer side, pixels"
    )
    work.add_argument(
        "--v3-sized",
        action=argparse.BooleanOptionalAction,
        default=d.v3_sized,
        help="meshes sized like Hunyuan3D v3's defaults (some 200-450 k faces, a 2048 px texture)",
    )
    work.add_argument(
        "--mesh-bytes", type=int, default=None, help="pad every output GLB to about this many bytes"
    )
    work.add_argument(
        "--v3-extra-outputs",
        action=argparse.BooleanOptionalAction,
        default=d.v3_extra_outputs,
        help="v3 models return [preview.png, mesh.glb]",
    )
    work.add_argument(
        "--v2-obj",
        action=argparse.BooleanOptionalAction,
        default=d.v2_obj_output,
        help="v2 models return a plain .obj text mesh instead of a GLB",
    )
    work.add_argument(
        "--output-url-ttl",
        type=int,
        default=d.output_url_ttl_s,
        help="realistic profile: seconds a signed output URL stays valid (default %(default)s)",
    )
    work.add_argument(
        "--malformed-multiview-url",
        action=argparse.BooleanOptionalAction,
        default=d.malformed_multiview_get_url,
        help="multi-view urls.get is malformed ('//api')",
    )
    work.add_argument("--retention", type=float, default=None, help="seconds before results answer 404")
    work.add_argument("--max-upload-bytes", type=int, default=d.max_upload_bytes, help="413 above it")

    faults = parser.add_argument_group("faults")
    faults.add_argument("--cancel-rate", type=_rate, default=0.0, help="share of tasks ending 'cancelled'")
    faults.add_argument("--timeout-rate", type=_rate, default=0.0, help="share of tasks ending 'timeout'")
    faults.add_argument(
        "--unlisted-status-rate",
        type=_rate,
        default=None,
        help="share of tasks answering 'queued'/'starting' before 'processing' (0.3 realistic, else 0)",
    )
    faults.add_argument(
        "--echo-api-key-in-errors",
        action="store_true",
        help="failed predictions' error text quotes 'Bearer <api key>'",
    )
    faults.add_argument("--submit-429-rate", type=_rate, default=0.0)
    faults.add_argument("--submit-5xx-rate", type=_rate, default=0.0)
    faults.add_argument(
        "--submit-5xx-accepted",
        action=argparse.BooleanOptionalAction,
        default=d.submit_5xx_accepted,
        help="a 502/504 submit fault still creates and bills the prediction",
    )
    faults.add_argument("--poll-429-rate", type=_rate, default=0.0)
    faults.add_argument("--poll-5xx-rate", type=_rate, default=0.0)
    faults.add_argument(
        "--fault-5xx-statuses", type=_int_tuple, default=d.fault_5xx_statuses, metavar="500,502,503,504"
    )
    faults.add_argument(
        "--gateway-html",
        action=argparse.BooleanOptionalAction,
        default=d.gateway_5xx_html,
        help="502/504 faults answer an HTML page, not JSON",
    )
    faults.add_argument("--retry-after", type=float, default=None, help="Retry-After seconds on 429")
    faults.add_argument(
        "--webhook-loss-rate", type=_rate, default=0.0, help="share of webhook delivery attempts lost"
    )
    faults.add_argument("--truncate-rate", type=_rate, default=0.0, help="share of truncated downloads")
    faults.add_argument(
        "--download-403-rate",
        type=_rate,
        default=0.0,
        help="share of predictions whose first output download answers 403 'Request has expired'",
    )
    faults.add_argument("--seed", type=int, default=None, help="seed for reproducible faults")


def config_from_args(ns: argparse.Namespace) -> EmulatorConfig:
    """The EmulatorConfig described by parsed `add_arguments` flags (missing flags keep defaults)."""
    d = _DEFAULTS

    def get(name: str, default: Any) -> Any:
        return getattr(ns, name, default)

    prices = dict.fromkeys(MODELS, DEFAULT_PRICE_USD)
    for model, amount in get("price", []):
        if model is None:
            prices = dict.fromkeys(prices, amount)
        else:
            prices[model] = amount
    return EmulatorConfig(
        profile=get("profile", d.profile),
        api_key=get("api_key", d.api_key),
        prices=prices,
        balance=get("balance", d.balance),
        max_concurrency=get("max_concurrency", d.max_concurrency),
        max_submits_per_minute=get("max_submits_per_minute", None),
        discount_rate=get("discount_rate", None),
        latency_s=get("latency", d.latency_s),
        jitter_s=get("jitter", d.jitter_s),
        submit_answer_delay_s=get("submit_answer_delay", d.submit_answer_delay_s),
        failure_rate=get("failure_rate", d.failure_rate),
        failure_codes=tuple(get("failure_codes", d.failure_codes)),
        cancel_rate=get("cancel_rate", 0.0),
        timeout_rate=get("timeout_rate", 0.0),
        unlisted_status_rate=get("unlisted_status_rate", None),
        echo_api_key_in_errors=get("echo_api_key_in_errors", False),
        image_fetch_timeout_s=get("image_fetch_timeout", d.image_fetch_timeout_s),
        sync_timeout_s=get("sync_timeout", d.sync_timeout_s),
        mesh_grid=get("mesh_grid", d.mesh_grid),
        mesh_texture_px=get("mesh_texture_px", d.mesh_texture_px),
        v3_sized=get("v3_sized", d.v3_sized),
        mesh_bytes_target=get("mesh_bytes", None),
        v3_extra_outputs=get("v3_extra_outputs", d.v3_extra_outputs),
        v2_obj_output=get("v2_obj", d.v2_obj_output),
        output_url_ttl_s=get("output_url_ttl", d.output_url_ttl_s),
        malformed_multiview_get_url=get("malformed_multiview_url", d.malformed_multiview_get_url),
        retention_s=get("retention", None),
        max_upload_bytes=get("max_upload_bytes", d.max_upload_bytes),
        submit_429_rate=get("submit_429_rate", 0.0),
        submit_5xx_rate=get("submit_5xx_rate", 0.0),
        submit_5xx_accepted=get("submit_5xx_accepted", d.submit_5xx_accepted),
        poll_429_rate=get("poll_429_rate", 0.0),
        poll_5xx_rate=get("poll_5xx_rate", 0.0),
        fault_5xx_statuses=tuple(get("fault_5xx_statuses", d.fault_5xx_statuses)),
        gateway_5xx_html=get("gateway_html", d.gateway_5xx_html),
        retry_after_s=get("retry_after", None),
        webhook_loss_rate=get("webhook_loss_rate", 0.0),
        download_truncate_rate=get("truncate_rate", 0.0),
        download_403_rate=get("download_403_rate", 0.0),
        seed=get("seed", None),
    )


def serve(ns: argparse.Namespace, stop: threading.Event | None = None) -> int:
    """Run the emulator in the foreground until Ctrl-C (or until `stop` is set). Returns 0."""
    from emulator.server import EmulatorServer  # the app, uvicorn, trimesh: only when serving

    config = config_from_args(ns)
    server = EmulatorServer(config, host=getattr(ns, "host", "127.0.0.1"), port=getattr(ns, "port", 0))
    server.start()
    try:
        print(f"WaveSpeed emulator listening on {server.url}", flush=True)
        print(f"WAVESPEED_BASE_URL={server.url} WAVESPEED_API_KEY={server.api_key}", flush=True)
        print("Stats: GET /_emulator/stats   Ctrl-C to stop", flush=True)
        waiter = stop if stop is not None else threading.Event()
        while not waiter.wait(0.5):
            pass
    except KeyboardInterrupt:
        print("stopping emulator", flush=True)
    finally:
        server.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m emulator", description="Loopback emulator of the WaveSpeed Hunyuan3D API."
    )
    add_arguments(parser)
    return serve(parser.parse_args(argv))
