"""Replay tests: histories recorded from real runs of each lifecycle path (`histories/*.json`,
written by `python -m tests.replay.record`), replayed against today's ReferralWorkflow.

Histories are committed decoded: recorded with the project's data converter minus its payload
codec, and replayed with that same converter, so CI needs no encryption key and a reviewer can
read every payload. They hold only the fictional intake in `record.py`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from temporalio.converter import DataConverter

HISTORIES = Path(__file__).parent / "histories"  # no resolve(): the sandbox imports this package


def replay_data_converter() -> DataConverter:
    """The project's converter (infra.temporal) without encryption: used to record and to replay."""
    from config.settings import Settings
    from infra.temporal import data_converter

    settings = Settings(_env_file=None, referral_allow_plaintext=True, referral_encryption_keys=None)  # type: ignore[call-arg]
    return dataclasses.replace(data_converter(settings), payload_codec=None)


def payload_texts(history: dict) -> list[str]:
    """Every payload of a history (`WorkflowHistory.to_json()` parsed), decoded to text."""
    import base64

    out: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "data" in node and "metadata" in node and isinstance(node["data"], str):
                out.append(base64.b64decode(node["data"]).decode("utf-8", "replace"))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(history)
    return out
