"""Account routes: `POST /api/v3/model/price` and `GET /api/v3/balance`.

The price answer carries `discounted_price` (what a submit bills) in the realistic profile and whenever
a discount is set; the default profile without a discount answers `{model_id, price, currency}`."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from emulator.config import DEFAULT_PRICE_USD
from emulator.models import MODELS, discounted, price_for
from emulator.responses import ApiError, envelope, read_json_object, require_auth
from emulator.routing import RouteGroup, route


class AccountRoutes(RouteGroup):
    @route("/api/v3/model/price", "POST")
    async def price(self, request: Request) -> Response:
        config = self.state.config
        require_auth(request, config, self.state.stats)
        body = await read_json_object(request)
        model_id = body.get("model_id")
        if not isinstance(model_id, str) or not model_id:
            raise ApiError(400, "Missing required parameter: model_id")
        if model_id not in MODELS:
            raise ApiError(404, f"Model not found: {model_id}")
        inputs = body.get("inputs") or {}
        if not isinstance(inputs, dict):
            raise ApiError(400, "Invalid parameter 'inputs': must be an object")
        price = price_for(model_id, inputs, config.prices, DEFAULT_PRICE_USD)
        rate = config.effective_discount_rate
        if not (config.realistic or rate):
            return envelope({"model_id": model_id, "price": price, "currency": "USD"})
        data = {"model_id": model_id, "price": price, "discounted_price": discounted(price, rate)}
        if rate:
            data["discount_rate"] = rate
        return envelope({**data, "currency": "USD"})

    @route("/api/v3/balance", "GET")
    async def balance(self, request: Request) -> Response:
        config = self.state.config
        require_auth(request, config, self.state.stats)
        return envelope({"balance": round(config.balance, 6), "currency": "USD"})
