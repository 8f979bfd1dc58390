"""The ``wait`` task: poll a prediction until it is terminal. Never cached (a cached poll would
answer the first status forever)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.client import WaveSpeedClient
from tasks.models import Prediction


@task(name="wait", cache_policy=NO_CACHE, persist_result=False)
async def wait(
    client: WaveSpeedClient,
    prediction_id: str,
    timeout_s: float | None = None,
    model: str | None = None,
) -> Prediction:
    """Terminal prediction (completed or failed). Transient poll failures are retried inside the
    client with backoff and Retry-After; the deadline raises PredictionTimeoutError. ``model``
    lets polls of predictions this client submitted follow observed durations."""
    return await client.wait(prediction_id, timeout_s=timeout_s, model=model)
