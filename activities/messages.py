"""Messages rendered from the templates in config/messages/<language>.yaml.

A template can only use the fields of `NoticeContext`, none of which identifies the person;
rendering fails loudly on an unknown placeholder rather than sending a half-filled message.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo

import yaml

from workflows.models import Notice

LANGUAGES = ("fr", "ar", "en")


@dataclass(frozen=True)
class RenderedMessage:
    language: str
    sms: str | None
    subject: str
    body: str


class TemplateError(Exception):
    pass


@lru_cache(maxsize=16)
def _catalogue(path: Path, mtime: float) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def catalogue(messages_dir: Path, language: str) -> dict:
    path = Path(messages_dir) / f"{language}.yaml"
    return _catalogue(path, path.stat().st_mtime)


class _Strict(dict):
    def __missing__(self, key: str) -> str:
        raise TemplateError(f"unknown placeholder {{{key}}}")


def _format(template: str, values: dict) -> str:
    return string.Formatter().vformat(template, (), _Strict(values))


def render(notice: Notice, language: str, messages_dir: Path, timezone: str, link: str | None = None) -> RenderedMessage:
    if language not in LANGUAGES:
        language = "fr"
    cat = catalogue(messages_dir, language)
    ctx = notice.context
    labels = cat["labels"]

    def when(value: datetime | None) -> str:
        if value is None:
            return "-"
        return value.astimezone(ZoneInfo(timezone)).strftime(cat["time_format"])

    values = {
        "code": ctx.code,
        "ref": f"R-{ctx.code}",
        "service": labels["services"].get(ctx.service or "", ctx.service or "-"),
        "services": ", ".join(labels["services"].get(s, s) for s in ctx.services),
        "urgency": labels["urgency"][ctx.urgency],
        "region": labels["regions"].get(ctx.region, ctx.region),
        "deadline": when(ctx.deadline),
        "partner": ctx.partner_id or "-",
        "level": ctx.escalation_level,
        "age_group": labels["age_group"].get(ctx.age_group or "unknown", "-"),
        "languages": ", ".join(ctx.languages) or "-",
        "interpreter": labels["yes"] if ctx.interpreter_needed else labels["no"],
        "checkin_number": ctx.checkin_number or "-",
        "alert_count": ctx.alert_count or 0,
        "closed_reason": labels["closed_reason"].get(ctx.closed_reason or "closed", ctx.closed_reason or "-"),
        "channel": ctx.channel or "-",
        "problem": labels["problems"].get(ctx.problem or "", ctx.problem or "-"),
        "summary": "\n".join(f"- {line}" for line in ctx.summary_lines),
        "link": link or cat["no_link"],
    }
    entry = cat["templates"][notice.template]
    sms = entry.get("sms")
    return RenderedMessage(
        language=language,
        sms=_format(sms, values).strip() if sms else None,
        subject=_format(entry["subject"], values).strip(),
        body=_format(entry["body"], values).strip() + "\n\n" + _format(cat["footer"], values).strip() + "\n",
    )
