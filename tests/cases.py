"""Intake cases for tests, built from the committed examples."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from workflows.intake import Intake

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PSEUDONYM = "Amina K."
PHONE = "+212650123456"
NOTES = "Found at a farm near Berrechid; passport held by the employer."


def adult_case(**overrides: Any) -> dict[str, Any]:
    data = json.loads((EXAMPLES / "adult-three-needs.json").read_text())
    data["external_ref"] = f"TEST-{uuid.uuid4().hex[:12]}"
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


def adult_intake(**overrides: Any) -> Intake:
    return Intake.model_validate(adult_case(**overrides))


def uniform_policy(reply_within: str, remind_after: str, checkin_answer_within: str, escalated_alert_every: str, follow_ups: str) -> str:
    """An escalation policy YAML with the same ladder for every urgency (tests' own timings)."""
    ladder = (
        f"{{reply_within: {reply_within}, remind_after: {remind_after}, "
        f"checkin_answer_within: {checkin_answer_within}, escalated_alert_every: {escalated_alert_every}}}"
    )
    return (
        "urgencies:\n"
        + "".join(f"  {urgency}: {ladder}\n" for urgency in ("normal", "urgent", "emergency"))
        + f"follow_ups: [{follow_ups}]\n"
    )
