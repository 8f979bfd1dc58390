"""The prediction object as the API answers it (submit, poll, webhook body), in either profile.

Default profile: the documented shape, empty values until completion. Realistic profile (see the
README): JSON nulls until completion, the mesh as an object `{url, type, format, size}` after the
preview URL string, output URLs signed afresh on every answer, `timings` null.
"""

from __future__ import annotations

from typing import Any

from emulator.state import EmulatorState
from emulator.store import Prediction, PublishedFile


def prediction_json(state: EmulatorState, prediction: Prediction) -> dict[str, Any]:
    if prediction.realistic:
        return _realistic(state, prediction)
    return _default(prediction)


def _default(prediction: Prediction) -> dict[str, Any]:
    outputs = prediction.outputs
    return {
        "id": prediction.id,
        "model": prediction.model,
        "input": prediction.input,
        "outputs": outputs,
        "urls": {"get": prediction.get_url},
        "has_nsfw_contents": [False] * len(outputs),
        "status": prediction.status,
        "created_at": prediction.created_at,
        "error": prediction.error,
        "code": prediction.code,
        "executionTime": prediction.execution_ms,
        "timings": {"inference": prediction.inference_ms},
    }


def _output_item(state: EmulatorState, prediction: Prediction, entry: PublishedFile) -> str | dict[str, Any]:
    if entry.inline is not None:
        return entry.inline
    url = state.signer.sign(prediction.base_url, entry.name, state.config.output_url_ttl_s)
    if not entry.is_mesh:
        return url
    return {"url": url, "type": entry.media_type, "format": entry.format, "size": entry.size}


def _realistic(state: EmulatorState, prediction: Prediction) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": prediction.id,
        "model": prediction.model,
        "input": prediction.input,
        "outputs": None,
        "urls": {"get": prediction.get_url},
        "has_nsfw_contents": None,
        "status": prediction.status,
        "created_at": prediction.created_at,
        "error": prediction.error or None,
        "code": prediction.code or None,
        "executionTime": None,
        "timings": None,
    }
    if prediction.status == "completed":
        outputs = [_output_item(state, prediction, entry) for entry in prediction.files]
        data.update(outputs=outputs, has_nsfw_contents=[False] * len(outputs))
        data["executionTime"] = prediction.execution_ms
        del data["code"]  # "not always present"
    return data
