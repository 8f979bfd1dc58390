"""The prediction resource as parsed from the API's answers."""

from __future__ import annotations

import pytest

from tasks.prediction import Prediction, rfc3339_to_ns


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        ("2025-01-02T03:04:05.123456789Z", 1_735_787_045_123_456_789),  # the contract's form
        ("2025-01-02T03:04:05.123456789123Z", 1_735_787_045_123_456_789),  # beyond ns: cut
        ("2025-01-02T03:04:05Z", 1_735_787_045_000_000_000),
        ("2025-01-02T04:04:05.5+01:00", 1_735_787_045_500_000_000),
        ("2025-01-02T04:04:05.5+0100", 1_735_787_045_500_000_000),
        ("2025-01-02t03:04:05z", 1_735_787_045_000_000_000),
        ("2025-01-02 03:04:05.000001", 1_735_787_045_000_001_000),  # no zone: UTC
        ("2025-13-02T03:04:05Z", None),
        ("yesterday", None),
    ],
)
def test_creation_times_are_read_to_the_nanosecond(stamp: str, expected: int | None) -> None:
    """Submits accepted within the same microsecond must still be told apart (the account queue
    orders predictions by it)."""
    assert rfc3339_to_ns(stamp) == expected


def test_a_prediction_without_a_readable_creation_time_has_none() -> None:
    assert Prediction(id="p", status="created").created_ns is None
    assert Prediction(id="p", status="created", created_at="soon").created_ns is None
    stamped = Prediction(id="p", status="created", created_at="1970-01-01T00:00:01.000000002Z")
    assert stamped.created_ns == 1_000_000_002
