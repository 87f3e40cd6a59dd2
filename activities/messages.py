"""SMS and emails rendered from the `message.*` texts of the catalogue (infra/translations.py).

A template can only use the fields of `NoticeContext`, none of which identifies the person;
rendering fails loudly on an unknown placeholder rather than sending a half-filled message.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from infra.translations import DEFAULT_LANGUAGE, LANGUAGES, translations
from workflows.models import Notice


@dataclass(frozen=True)
class RenderedMessage:
    language: str
    sms: str | None
    subject: str
    body: str


def render(notice: Notice, language: str, messages_dir: Path, timezone: str, link: str | None = None) -> RenderedMessage:
    if language not in LANGUAGES:
        language = DEFAULT_LANGUAGE
    words = translations(messages_dir, language)
    ctx = notice.context
    services = words.labels("services")

    def when(value: datetime | None) -> str:
        if value is None:
            return "-"
        return value.astimezone(ZoneInfo(timezone)).strftime(words["message.time_format"])

    def label(kind: str, value: str, default: str) -> str:
        return words.labels(kind).get(value, default)

    values = {
        "code": ctx.code,
        "ref": f"R-{ctx.code}",
        "service": services.get(ctx.service or "", ctx.service or "-"),
        "services": ", ".join(services.get(s, s) for s in ctx.services),
        "urgency": words[f"labels.urgency.{ctx.urgency}"],
        "region": label("regions", ctx.region, ctx.region),
        "deadline": when(ctx.deadline),
        "partner": ctx.partner_id or "-",
        "level": ctx.escalation_level,
        "age_group": label("age_group", ctx.age_group or "unknown", "-"),
        "languages": ", ".join(ctx.languages) or "-",
        "interpreter": words["labels.yes"] if ctx.interpreter_needed else words["labels.no"],
        "checkin_number": ctx.checkin_number or "-",
        "alert_count": ctx.alert_count or 0,
        "closed_reason": label("closed_reason", ctx.closed_reason or "closed", ctx.closed_reason or "-"),
        "channel": ctx.channel or "-",
        "problem": label("problems", ctx.problem or "", ctx.problem or "-"),
        "summary": "\n".join(f"- {line}" for line in ctx.summary_lines),
        "link": link or words["message.no_link"],
    }
    template = f"message.{notice.template}"
    has_sms = f"{template}.sms" in words  # some notices go by email only
    return RenderedMessage(
        language=language,
        sms=words.format(f"{template}.sms", **values).strip() if has_sms else None,
        subject=words.format(f"{template}.subject", **values).strip(),
        body=words.format(f"{template}.body", **values).strip() + "\n\n" + words.format("message.footer", **values).strip() + "\n",
    )
