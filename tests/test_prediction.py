"""The prediction resource as parsed from the API's answers."""

from __future__ import annotations

import pytest

from tasks.models import Prediction, rfc3339_to_ns


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


def test_nulls_before_completion_read_as_absent() -> None:
    """WaveSpeed's own CLI and MCP server read these fields with `?? []`: null is not an error."""
    answer = {
        "id": "abc",
        "model": None,
        "status": "created",
        "outputs": None,
        "has_nsfw_contents": None,
        "timings": None,
        "error": None,
        "code": None,
        "executionTime": None,
        "created_at": None,
    }
    prediction = Prediction.model_validate(answer)
    assert (prediction.outputs, prediction.timings, prediction.error, prediction.code) == ([], {}, "", 0)
    assert prediction.execution_time_ms is None and prediction.inference_ms is None
    done = Prediction.model_validate({**answer, "status": "completed", "outputs": ["https://c/x.glb"]})
    assert done.succeeded and done.outputs == ["https://c/x.glb"]


def test_outputs_may_be_objects_carrying_a_url() -> None:
    mesh = {"url": "https://cdn/o/t1?X-Amz-Signature=s", "format": "glb"}
    prediction = Prediction.model_validate(
        {"id": "p", "status": "completed", "outputs": ["https://cdn/p.png", mesh, {"no": "url"}, 7]}
    )
    assert prediction.outputs == ["https://cdn/p.png", mesh["url"]]
    assert prediction.output_objects == [mesh, {"no": "url"}]


@pytest.mark.parametrize(
    ("status", "terminal"),
    [("COMPLETED", True), ("cancelled", True), ("timeout", True), ("queued", False), (None, False)],
)
def test_statuses_are_read_liberally(status: str | None, terminal: bool) -> None:
    assert Prediction.model_validate({"id": "p", "status": status}).is_terminal is terminal


def test_only_an_answer_without_an_id_is_unusable() -> None:
    from pydantic import ValidationError

    assert (
        Prediction.model_validate({"id": 12345, "status": "weird", "timings": "x", "code": "5000"}).id
        == "12345"
    )
    with pytest.raises(ValidationError):
        Prediction.model_validate({"status": "created", "outputs": []})
    with pytest.raises(ValidationError):
        Prediction.model_validate({"id": "", "status": "created"})
