"""One prediction's life: created -> (account slot) processing -> completed | failed."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import uuid

from emulator.inputs import TaskFailure, check_image, download
from emulator.models import ModelSpec
from emulator.render import OutputFile, render_outputs
from emulator.state import EmulatorState
from emulator.store import Blob, Prediction
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


def _publish(state: EmulatorState, prediction: Prediction, files: list[OutputFile]) -> list[str]:
    if prediction.base64_output:
        return [base64.b64encode(f.data).decode("ascii") for f in files]
    urls = []
    for f in files:
        name = f"{uuid.uuid4()}{f.extension}"
        state.store.outputs[name] = Blob(f.data, f.content_type)
        urls.append(f"{prediction.base_url}/cdn/output/{name}")
    return urls


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
    prompt = str(prediction.input.get("prompt", ""))
    rendering = asyncio.ensure_future(
        asyncio.to_thread(
            render_outputs,
            image,
            prompt,
            config.mesh_grid,
            config.mesh_bytes_target,
            spec.multi_output and config.v3_extra_outputs,
        )
    )
    # A render that fails after the prediction failed or was cancelled is not worth a log line.
    rendering.add_done_callback(lambda task: task.cancelled() or task.exception())
    try:
        await asyncio.sleep(duration / 2)
        if state.chance(config.failure_rate):
            code = state.rng.choice(config.failure_codes) if config.failure_codes else 5000
            raise TaskFailure(code, FAILURE_MESSAGES.get(code, "Task failed"))
        files = await rendering
    finally:
        rendering.cancel()  # failed or cancelled: the result is not wanted (the thread runs out)
    prediction.outputs = _publish(state, prediction, files)
    prediction.inference_ms = round((time.monotonic() - started) * 1000)


async def run_prediction(state: EmulatorState, prediction: Prediction, spec: ModelSpec) -> None:
    """The background task of one accepted prediction."""
    outcome: int | None = 0  # None completed, a code when failed, 0 when cancelled
    try:
        async with state.slots.slot():
            prediction.status = "processing"
            state.stats.record_processing(+1, prediction.id)
            began = time.monotonic()
            try:
                await _process(state, prediction, spec)
                prediction.status = "completed"
                state.stats.record_completed(prediction.id, prediction.outputs)
                outcome = None
            except TaskFailure as failure:
                prediction.error, prediction.code = failure.message, failure.code
                prediction.status = "failed"
                outcome = failure.code
            except Exception:
                log.exception("prediction %s crashed", prediction.id)
                prediction.error, prediction.code = FAILURE_MESSAGES[5000], 5000
                prediction.status = "failed"
                outcome = 5000
            finally:
                prediction.execution_ms = round((time.monotonic() - began) * 1000)
                state.stats.record_processing(-1)
    finally:
        state.stats.record_terminal(outcome)
        prediction.done.set()
        if outcome != 0 and prediction.webhook:  # completed or failed; not cancelled
            state.spawn(deliver(state, prediction, prediction.webhook))
