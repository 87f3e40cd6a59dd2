"""What the developer sees: one-line messages, paths as they would type them, and the error
for something they can fix."""

from __future__ import annotations

import sys
from pathlib import Path

HOST = "127.0.0.1"


class StartupError(Exception):
    """Something the user can fix; printed as one line."""


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def shown(path: Path) -> str:
    """A path as the user would type it: relative to the working directory when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
