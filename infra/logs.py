"""structlog set-up: readable in development, JSON in production (LOG_FORMAT=json).

One format for every line a process writes: structlog's own loggers (activities, web app,
worker) and the standard library's (the Temporal SDK, `workflow.logger`, uvicorn) go through
the same processors and renderer, to stdout.

Context on each line:
- activities: `LogContextInterceptor` (worker.py) binds `referral` (the code), `workflow_id`,
  `run_id`, `activity` and `attempt` for the whole activity, through structlog contextvars;
- workflows log with `workflow.logger` (skipped while replaying) with `extra={"referral": code}`;
  the SDK's `temporal_workflow` / `temporal_activity` details become `workflow_id`, `run_id`.

No line may carry personal data (pseudonym, phone, notes). Call sites log codes, ids, services
and counts only; `scrub` below is a last net for what slips through in exception text
(pydantic's `input_value=...` echoes, phone numbers).
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any, TextIO

import structlog
from structlog.types import EventDict, WrappedLogger

from config.settings import Settings

_HANDLER_MARK = "_referral_log_handler"
_INPUT_VALUE = re.compile(r"input_value=(?:'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|\{.*?\}(?=, input_type)|[^,\]]*)")
_PHONE = re.compile(r"(?<![\w+])\+\d[\d ]{6,17}\d(?!\w)")
_MOROCCAN_MOBILE = re.compile(r"(?<![\w.:/-])0[5-7]\d{8}(?![\w.:/-])")
# A partner details link (/p/<token>) is a capability: never in a log line (uvicorn's access log).
_PARTNER_LINK = re.compile(r"/p/[A-Za-z0-9._~=-]{16,}")


def _scrub_text(text: str) -> str:
    text = _INPUT_VALUE.sub("input_value=<redacted>", text)
    text = _PHONE.sub("<phone>", text)
    text = _MOROCCAN_MOBILE.sub("<phone>", text)
    return _PARTNER_LINK.sub("/p/<token>", text)


def scrub(logger: WrappedLogger, method: str, event: EventDict) -> EventDict:
    """Redact input echoes and phone numbers from every string value of a line."""
    for key, value in list(event.items()):
        if isinstance(value, str) and key not in ("timestamp", "level"):
            event[key] = _scrub_text(value)
    return event


def referral_code(workflow_id: str | None) -> str | None:
    if workflow_id and workflow_id.startswith("referral-"):
        return workflow_id.removeprefix("referral-")
    return None


def temporal_context(logger: WrappedLogger, method: str, event: EventDict) -> EventDict:
    """The SDK's `temporal_workflow` / `temporal_activity` extras as flat, greppable keys."""
    wf = event.pop("temporal_workflow", None)
    if isinstance(wf, dict):
        event.setdefault("workflow_id", wf.get("workflow_id"))
        event.setdefault("run_id", wf.get("run_id"))
        if wf.get("update_name"):
            event.setdefault("update", wf.get("update_name"))
    act = event.pop("temporal_activity", None)
    if isinstance(act, dict):
        event.setdefault("workflow_id", act.get("workflow_id"))
        event.setdefault("run_id", act.get("workflow_run_id"))
        event.setdefault("activity", act.get("activity_type"))
    if event.get("message") == event.get("event"):
        event.pop("message")  # the standard library's copy of the text
    code = referral_code(event.get("workflow_id"))
    if code:
        event.setdefault("referral", code)
    return event


def _shared(settings: Settings) -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.ExtraAdder(),
        # After the caller's fields: `level` and `logger` are always the record's own.
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        temporal_context,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        scrub,
    ]


def _renderer(settings: Settings) -> Any:
    if settings.log_format == "json":
        return structlog.processors.JSONRenderer(default=str, ensure_ascii=False)
    return structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)


def configure_logging(settings: Settings, stream: TextIO | None = None) -> None:
    """Configure structlog and the standard library's root logger; idempotent.

    `stream` (default stdout) receives every line: tests pass a StringIO."""
    level = logging.getLevelName(settings.log_level.upper())
    if not isinstance(level, int):
        level = logging.INFO
    out = stream if stream is not None else sys.stdout
    shared = _shared(settings)

    handler = logging.StreamHandler(out)
    setattr(handler, _HANDLER_MARK, True)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, _renderer(settings)],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # uvicorn installs its own handlers; its lines go through ours instead.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uv = logging.getLogger(name)
        uv.handlers.clear()
        uv.propagate = True
        uv.disabled = False  # a dictConfig elsewhere (uvicorn's own) may have turned it off
        uv.setLevel(logging.NOTSET)

    # The SDK's workflow and activity details go in fields (see temporal_context), not in the text.
    from temporalio import activity, workflow

    workflow.logger.workflow_info_on_message = False
    activity.logger.activity_info_on_message = False

    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # Not cached: a logger made at import follows a later configure_logging (tests).
        cache_logger_on_first_use=False,
    )


def reset_logging() -> None:
    """Undo configure_logging (tests)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    structlog.reset_defaults()
    from temporalio import activity, workflow

    workflow.logger.workflow_info_on_message = True
    activity.logger.activity_info_on_message = True
