"""One prediction's life: created -> (account slot) [queued | starting ->] processing -> completed |
failed | cancelled | timeout."""

from __future__ import annotations

import asyncio
import logging
import time

from emulator.config import EmulatorConfig
from emulator.inputs import TaskFailure, check_image, download
from emulator.links import publish
from emulator.models import ModelSpec
from emulator.render import MeshFormat, render_outputs
from emulator.state import EmulatorState
from emulator.store import Prediction
from emulator.webhooks import deliver

log = logging.getLogger("emulator")

FAILURE_MESSAGES: dict[int, str] = {
    1200: "Content moderation: the input was flagged as inappropriate",
    1400: "Missing parameter",
    1401: "Invalid parameter",
    1402: "Cannot download the input URL",
    1403: "Task failed",
    1405: "Task failed",
    5000: "Internal server error, please retry",
    5003: "Service temporarily unavailable, please retry",
    5004: "Task timed out",
}
CANCELLED_MESSAGE = "Prediction cancelled"
UNLISTED_STATUSES = ("queued", "starting")
"""Statuses the contract does not list, answered before `processing` (`unlisted_status_rate`)."""
WEBHOOK_STATUSES = frozenset({"completed", "failed"})


async def _fetch_inputs(state: EmulatorState, prediction: Prediction, spec: ModelSpec) -> bytes | None:
    """Download and check every image input; the primary one's bytes (None for text-to-3d)."""
    http = state.http_client()
    primary: bytes | None = None
    for field in spec.image_fields:
        url = prediction.input.get(field)
        if not isinstance(url, str):
            continue
        data = await download(field, url, prediction.own_netloc, state.store, http, state.config)
        check_image(field, url, data, state.config)
        if field == spec.primary_image:
            primary = data
    return primary


def _mesh_format(spec: ModelSpec, config: EmulatorConfig, realistic: bool) -> MeshFormat:
    if spec.multi_output:
        return MeshFormat.OBJ_ZIP if realistic else MeshFormat.GLB
    return MeshFormat.OBJ if config.v2_obj_output else MeshFormat.GLB


def _error_text(config: EmulatorConfig, message: str) -> str:
    if config.echo_api_key_in_errors:
        return f"{message} (upstream request failed; Authorization: Bearer {config.api_key})"
    return message


def _first_status(state: EmulatorState, prediction: Prediction) -> str:
    """`processing`, or for a share of predictions a status the contract does not list."""
    if state.chance(state.config.unlisted_status_rate_for(prediction.realistic)):
        return state.rng.choice(UNLISTED_STATUSES)
    return "processing"


async def _process(state: EmulatorState, prediction: Prediction, spec: ModelSpec) -> None:
    """Fill in the outcome; raises TaskFailure for a task error."""
    config = state.config
    image = await _fetch_inputs(state, prediction, spec)
    started = time.monotonic()
    duration = state.processing_time()
    # The mesh is rendered during the second half of the processing time, not after it: rendered
    # after, a thousand predictions ending together queued for the emulator's threads and their
    # processing times (executionTime) stretched from 10 s to 14 s, which is not the latency
    # configured. Not from the start either: the renders then compete with the burst of submits.
    await asyncio.sleep(duration / 2)
    prediction.status = "processing"  # after an unlisted status, if any
    prompt = str(prediction.input.get("prompt", ""))
    rendering = asyncio.ensure_future(
        asyncio.to_thread(
            render_outputs,
            image,
            prompt,
            config.mesh_size()[0],
            config.mesh_bytes_target,
            prediction.realistic or (spec.multi_output and config.v3_extra_outputs),
            _mesh_format(spec, config, prediction.realistic),
            config.mesh_size()[1],
        )
    )
    # A render that fails after the prediction failed or was cancelled is not worth a log line.
    rendering.add_done_callback(lambda task: task.cancelled() or task.exception())
    try:
        await asyncio.sleep(duration / 2)
        if state.chance(config.failure_rate):
            code = state.rng.choice(config.failure_codes) if config.failure_codes else 5000
            raise TaskFailure(code, FAILURE_MESSAGES.get(code, "Task failed"))
        if state.chance(config.cancel_rate):
            raise TaskFailure(0, CANCELLED_MESSAGE, status="cancelled")
        if state.chance(config.timeout_rate):
            raise TaskFailure(5004, FAILURE_MESSAGES[5004], status="timeout")
        files = await rendering
    finally:
        rendering.cancel()  # failed or cancelled: the result is not wanted (the thread runs out)
    prediction.files = publish(state, prediction, files)
    prediction.links_expire = state.chance(config.download_403_rate)
    prediction.inference_ms = round((time.monotonic() - started) * 1000)


async def run_prediction(state: EmulatorState, prediction: Prediction, spec: ModelSpec) -> None:
    """The background task of one accepted prediction."""
    config = state.config
    ended: str | None = None  # the terminal status; None when cancelled at shutdown/reset
    try:
        async with state.slots.slot():
            prediction.status = _first_status(state, prediction)
            state.stats.record_processing(+1, prediction.id)
            began = time.monotonic()
            try:
                await _process(state, prediction, spec)
                prediction.status = "completed"
                names = [f.name for f in prediction.files if f.name]
                state.stats.record_completed(prediction.id, names)
            except TaskFailure as failure:
                failed = failure.status == "failed"
                prediction.error = _error_text(config, failure.message) if failed else failure.message
                prediction.code = failure.code
                prediction.status = failure.status
            except Exception:
                log.exception("prediction %s crashed", prediction.id)
                prediction.error, prediction.code = _error_text(config, FAILURE_MESSAGES[5000]), 5000
                prediction.status = "failed"
            finally:
                prediction.execution_ms = round((time.monotonic() - began) * 1000)
                state.stats.record_processing(-1)
            ended = prediction.status
    finally:
        state.stats.record_terminal(ended, prediction.code)
        prediction.done.set()
        if ended in WEBHOOK_STATUSES and prediction.webhook:
            state.spawn(deliver(state, prediction, prediction.webhook))
