"""Submit (`POST /api/v3/{model_id}`) and poll (`GET /api/v3/predictions/{id}[/result]`)."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from emulator.answers import prediction_json
from emulator.config import DEFAULT_PRICE_USD
from emulator.inputs import TaskFailure, decode_data_uri, own_media_key
from emulator.lifecycle import run_prediction
from emulator.models import MODELS, InvalidInput, ModelSpec, discounted, price_for
from emulator.responses import (
    ApiError,
    envelope,
    read_json_object,
    require_auth,
    server_fault,
    too_many_requests,
)
from emulator.routing import RouteGroup, route
from emulator.stats import bytes_key, prompt_key, url_key
from emulator.store import Prediction, new_id

BASE64_WITH_WEBHOOK = (
    "webhook callback does not support base64 output, "
    "please disable enable_base64_output or remove the webhook"
)


class PredictionRoutes(RouteGroup):
    def submit_route(self) -> Route:
        """The catch-all submit route: register it after every other POST route under /api/v3/."""
        return Route("/api/v3/{model_id:path}", self.submit, methods=["POST"])

    # ---- submit ------------------------------------------------------------------------------------
    def _input_key(self, spec: ModelSpec, body: dict[str, Any], own_netloc: str) -> str:
        field = spec.primary_image
        if field is None:
            return prompt_key(str(body.get("prompt", "")))
        url = str(body[field])
        if url.startswith("data:"):
            try:
                return bytes_key(decode_data_uri(field, url))
            except TaskFailure:
                return url_key(url)
        key = own_media_key(url, own_netloc)
        blob = self.state.store.media_blob(key, self.state.config.retention_s) if key is not None else None
        return bytes_key(blob.data) if blob is not None else url_key(url)

    def _accept(
        self, request: Request, spec: ModelSpec, body: dict[str, Any], price: float, webhook: str | None
    ) -> Prediction:
        state, config = self.state, self.state.config
        pid = new_id()
        base = str(request.base_url).rstrip("/")
        separator = "//" if spec.malformed_get_url and config.malformed_multiview_get_url else "/"
        prediction = Prediction(
            id=pid,
            model=spec.model_id,
            input=body,
            base_url=base,
            get_url=f"{base}{separator}api/v3/predictions/{pid}/result",
            input_key=self._input_key(spec, body, request.url.netloc),
            own_netloc=request.url.netloc,
            base64_output=body.get("enable_base64_output") is True,
            webhook=webhook,
            realistic=config.realistic,
        )
        state.store.predictions[pid] = prediction
        config.balance = round(config.balance - price, 9)
        state.stats.record_accepted(spec.model_id, prediction.input_key, price, webhook, pid)
        state.spawn(run_prediction(state, prediction, spec))
        return prediction

    async def submit(self, request: Request) -> Response:
        state, config = self.state, self.state.config
        state.stats.record_submit_received()
        require_auth(request, config, state.stats)
        if state.chance(config.submit_429_rate):
            state.stats.record_fault("submit_429")
            raise too_many_requests(config)
        if state.rate_limited():
            state.stats.record_fault("submit_rate_limit")
            raise too_many_requests(config)

        model_id = request.path_params["model_id"]
        spec = MODELS.get(model_id)
        if spec is None:
            raise ApiError(404, f"Model not found: {model_id}")
        body = await read_json_object(request)
        try:
            spec.validate(body)
        except InvalidInput as exc:
            if exc.reason == "is required":
                raise ApiError(400, f"Missing required parameter: {exc.field}") from exc
            raise ApiError(400, f"Invalid parameter '{exc.field}': {exc.reason}") from exc

        webhook = request.query_params.get("webhook") or body.get("webhook_url")
        webhook = webhook if isinstance(webhook, str) and webhook else None
        if body.get("enable_base64_output") is True and webhook:
            return JSONResponse({"error": BASE64_WITH_WEBHOOK}, status_code=400)
        list_price = price_for(model_id, body, config.prices, DEFAULT_PRICE_USD)
        price = discounted(list_price, config.effective_discount_rate)
        if price > config.balance + 1e-9:
            raise ApiError(403, "Insufficient balance, please top up your account")

        fault_status: int | None = None
        if config.fault_5xx_statuses and state.chance(config.submit_5xx_rate):
            fault_status = state.rng.choice(config.fault_5xx_statuses)
            if not (config.submit_5xx_accepted and fault_status in (502, 504)):
                state.stats.record_fault(f"submit_{fault_status}")
                return server_fault(fault_status, config)

        prediction = self._accept(request, spec, body, price, webhook)
        if config.submit_answer_delay_s > 0:
            await asyncio.sleep(state.rng.uniform(0.0, config.submit_answer_delay_s))
        if fault_status is not None:
            state.stats.record_fault(f"submit_{fault_status}_accepted")
            return server_fault(fault_status, config)
        if body.get("enable_sync_mode") is True:
            return await self._answer_sync(prediction)
        return envelope(prediction_json(state, prediction))

    async def _answer_sync(self, prediction: Prediction) -> Response:
        timeout = self.state.config.sync_timeout_s
        try:
            await asyncio.wait_for(prediction.done.wait(), timeout)
        except TimeoutError:
            data = prediction_json(self.state, prediction)
            data.update(
                status="processing",
                code=5004,
                error=f"Sync mode timed out after {timeout:g} seconds, please poll the prediction result",
            )
            return envelope(data)
        return envelope(prediction_json(self.state, prediction))

    # ---- poll --------------------------------------------------------------------------------------
    @route("/api/v3/predictions/{prediction_id}/result", "GET")
    @route("/api/v3/predictions/{prediction_id}", "GET")
    async def poll(self, request: Request) -> Response:
        state, config = self.state, self.state.config
        require_auth(request, config, state.stats)
        pid = request.path_params["prediction_id"]
        state.stats.record_poll(pid)
        if state.chance(config.poll_429_rate):
            state.stats.record_fault("poll_429")
            raise too_many_requests(config)
        if config.fault_5xx_statuses and state.chance(config.poll_5xx_rate):
            status = state.rng.choice(config.fault_5xx_statuses)
            state.stats.record_fault(f"poll_{status}")
            return server_fault(status, config)
        prediction = state.store.prediction(pid, config.retention_s)
        if prediction is None:
            raise ApiError(404, f"Prediction not found: {pid}")
        state.stats.record_poll_answer(pid, prediction.status)
        return envelope(prediction_json(state, prediction))
