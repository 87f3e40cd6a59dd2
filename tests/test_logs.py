"""infra/logs.py: one format for structlog and the standard library, and the last-resort scrubber."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog

from config.settings import Settings
from infra.logs import configure_logging, reset_logging


@pytest.fixture
def configured():
    def configure(fmt: str) -> io.StringIO:
        out = io.StringIO()
        configure_logging(Settings(_env_file=None, log_format=fmt, log_level="INFO"), stream=out)  # type: ignore[call-arg]
        return out

    yield configure
    reset_logging()


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_fields_named_like_reserved_keys_do_not_break_a_line(configured, fmt):
    out = configured(fmt)
    # workflow.logger passes `extra`; a field called `level` must not replace the log level.
    logging.getLogger("temporalio.workflow").info(
        "escalation", extra={"level": 2, "temporal_workflow": {"workflow_id": "referral-7K3Q9", "run_id": "r1"}}
    )
    structlog.get_logger("activities").warning("sent", level=5)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, out.getvalue()
    if fmt == "json":
        first, second = (json.loads(line) for line in lines)
        assert first["level"] == "info" and first["referral"] == "7K3Q9" and first["workflow_id"] == "referral-7K3Q9"
        assert first["run_id"] == "r1" and "message" not in first
        assert second["level"] == "warning"
    else:
        assert "escalation" in lines[0] and "referral=7K3Q9" in lines[0]


def test_scrubber_redacts_numbers_input_echoes_and_partner_links(configured):
    out = configured("json")
    log = structlog.get_logger("t")
    try:
        raise ValueError("1 validation error [type=value_error, input_value='Amina K.', input_type=str]")
    except ValueError:
        log.exception("failed", to="+212 650 123 456", local="0650123456")
    logging.getLogger("uvicorn.access").info('GET /p/abcdefghijklmnopqrstuvwxyz0123456789 HTTP/1.1" 200')
    text = out.getvalue()
    for secret in ("Amina", "650 123", "0650123456", "abcdefghijklmnop"):
        assert secret not in text
    assert "input_value=<redacted>" in text and "<phone>" in text and "/p/<token>" in text
