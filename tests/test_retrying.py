"""Retries: what is retried, and when a deadline stops them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from tasks import client as retrying
from tasks.client import RetryPolicy, retry_async

SLOW = RetryPolicy(attempts=5, initial_s=20.0, maximum_s=20.0)  # every backoff is 10-20 s


class Flaky:
    """Fails ``failures`` times, then answers."""

    def __init__(self, failures: int) -> None:
        self.failures, self.calls = failures, 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("try again")
        return "answer"


def run(flaky: Flaky, deadline_in_s: float) -> str:
    async def go() -> str:
        return await retry_async(
            flaky,
            on=lambda exc: isinstance(exc, ConnectionError),
            policy=SLOW,
            what="call",
            deadline=time.monotonic() + deadline_in_s,
        )

    return asyncio.run(go())


@pytest.fixture
def waiting() -> Iterator[None]:
    retrying.set_testing(False)
    yield
    retrying.set_testing(True)


@pytest.mark.usefixtures("waiting")
def test_a_retry_whose_wait_would_pass_the_deadline_is_not_made() -> None:
    flaky = Flaky(failures=1)
    started = time.monotonic()
    with pytest.raises(ConnectionError):
        run(flaky, deadline_in_s=5.0)
    assert flaky.calls == 1 and time.monotonic() - started < 1.0  # gave up at once, did not sleep


def test_in_testing_retries_do_not_wait_so_no_wait_passes_the_deadline() -> None:
    """The switch that removes waiting removes it from the deadline too (test_polls_ride_out_429_and_5xx
    failed in CI when a 16-32 s backoff, never slept, was judged to outlast its 30 s deadline)."""
    flaky = Flaky(failures=3)
    assert run(flaky, deadline_in_s=5.0) == "answer"
    assert flaky.calls == 4
