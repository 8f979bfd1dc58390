"""What a run will cost before it starts: items to pay for (after what is done, resumable or
cached), the price of each, and the account balance."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from prefect import Task
from prefect.results import ResultStore

from flows.pipeline import already_done
from flows.prepare import PreparedItem
from tasks.client import Price, WaveSpeedClient
from tasks.errors import AuthenticationError, WaveSpeedError
from tasks.ledger import PredictionLedger
from tasks.storage import Storage


@dataclass
class Estimate:
    items: int = 0  # valid items in the manifest
    already_done: int = 0  # a verified mesh of the same content is in the output
    already_paid: int = 0  # a prediction exists (ledger or submit cache): resumed, not paid again
    to_pay: int = 0  # unique contents that need a new submit
    total_usd: float | None = 0.0  # None when some price could not be read
    balance_usd: float | None = None
    unit_prices: dict[str, Price | None] = field(default_factory=dict)  # inputs (JSON) -> price
    price_by_key: dict[str, float | None] = field(default_factory=dict)  # content key -> USD billed

    def lines(self) -> list[str]:
        lines = [
            f"items in the manifest: {self.items}",
            f"already done in the output: {self.already_done}",
            f"already paid for (resumed, not paid again): {self.already_paid}",
            f"to pay for: {self.to_pay}",
        ]
        for inputs, price in self.unit_prices.items():
            shown = "unknown"
            if price is not None and price.discounted_usd is not None:
                shown = (
                    f"${price.discounted_usd:.4f} (discounted from ${price.list_usd:.4f}; the total uses it)"
                )
            elif price is not None:
                shown = f"${price.list_usd:.4f}"
            lines.append(f"price per item: {shown}" + (f" (inputs {inputs})" if inputs != "{}" else ""))
        lines.append(f"total: ${self.total_usd:.4f}" if self.total_usd is not None else "total: unknown")
        if self.balance_usd is not None:
            lines.append(f"account balance: ${self.balance_usd:.4f}")
        return lines


def _inputs_key(inputs: dict[str, Any]) -> str:
    return json.dumps(inputs, sort_keys=True, default=str)


async def _cached(store: ResultStore, key: str) -> bool:
    try:
        return bool(await store.aexists(key))
    except Exception:
        return False


async def price_items(
    client: WaveSpeedClient, prepared: list[PreparedItem]
) -> tuple[dict[str, Price | None], dict[str, float | None]]:
    """(price per distinct inputs, price per content key); None where WaveSpeed would not say."""
    unit_prices: dict[str, Price | None] = {}
    by_key: dict[str, float | None] = {}
    for entry in prepared:
        inputs_key = _inputs_key(entry.request.inputs)
        if inputs_key not in unit_prices:
            try:
                unit_prices[inputs_key] = await client.get_price(entry.request.model, entry.request.inputs)
            except AuthenticationError:
                raise
            except WaveSpeedError:
                unit_prices[inputs_key] = None
        price = unit_prices[inputs_key]
        by_key[entry.request.content_key] = None if price is None else price.billed_usd
    return unit_prices, by_key


async def estimate_cost(
    client: WaveSpeedClient,
    prepared: list[PreparedItem],
    *,
    storage: Storage | None,
    submit_task: Task[..., Any],
) -> Estimate:
    """Count what would be paid for and price it. Prices come from WaveSpeed's price endpoint, once
    per distinct set of non-image inputs (the image does not change the price).

    The output and the ledger are read here and read again when each item is processed: this is a
    forecast, while what decides whether to pay is read afresh at that moment (another run on the
    same output may have landed or submitted the item meanwhile)."""
    estimate = Estimate(items=len(prepared))
    store = await ResultStore().aupdate_for_task(submit_task)
    ledger = PredictionLedger(storage) if storage is not None else None
    seen: set[str] = set()
    pending: list[PreparedItem] = []
    for entry in prepared:
        key = entry.request.content_key
        if storage is not None and await asyncio.to_thread(already_done, storage, entry) is not None:
            estimate.already_done += 1
            continue
        if key in seen:
            continue  # the same content under another id: one prediction serves both
        seen.add(key)
        recorded = await asyncio.to_thread(ledger.read, key) if ledger is not None else None
        paid = recorded is not None and recorded.state == "submitted" and not recorded.expired
        if paid or await _cached(store, entry.request.cache_key):
            estimate.already_paid += 1
            continue
        pending.append(entry)
    estimate.to_pay = len(pending)

    estimate.unit_prices, estimate.price_by_key = await price_items(client, prepared)
    prices = [estimate.price_by_key[entry.request.content_key] for entry in pending]
    estimate.total_usd = None if any(price is None for price in prices) else sum(p or 0.0 for p in prices)
    try:
        estimate.balance_usd = await client.get_balance()
    except AuthenticationError:
        raise
    except WaveSpeedError:
        estimate.balance_usd = None
    return estimate
