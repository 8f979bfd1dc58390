"""Secrets a server echoes back are redacted before anything keeps them."""

from __future__ import annotations

import logging

import pytest

from tasks.models import Prediction
from tasks.storage import MASK, redact, redact_data, redact_logs, register_secret

SECRET = "wsk-test-secret-echoed-7f3a"


def test_redaction_of_text_data_and_predictions() -> None:
    register_secret(SECRET)
    assert (
        redact(f"invalid header Authorization: Bearer {SECRET}")
        == f"invalid header Authorization: Bearer {MASK}"
    )
    assert redact_data({"error": [SECRET, 3], SECRET: None}) == {"error": [MASK, 3], MASK: None}
    failed = Prediction.model_validate({"id": "p", "status": "failed", "error": f"echo: Bearer {SECRET}"})
    assert SECRET not in failed.error


def test_log_records_are_redacted_on_every_handler(caplog: pytest.LogCaptureFixture) -> None:
    register_secret(SECRET)
    handler = logging.StreamHandler()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        redact_logs()
        record = logging.LogRecord(
            "hy3d.x", logging.ERROR, __file__, 1, "failed: %s", (f"Bearer {SECRET}",), None
        )
        assert all(f.filter(record) for f in handler.filters)
        assert record.getMessage() == f"failed: Bearer {MASK}"
    finally:
        root.removeHandler(handler)
