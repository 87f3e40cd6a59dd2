"""What the routes share, as FastAPI dependencies: the settings and the Temporal client.

Both are set on `app.state` by `web.app.create_app` (tests pass their own).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from temporalio.client import Client

from config.settings import Settings


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def client_of(request: Request) -> Client:
    client: Client = request.app.state.client
    return client


SettingsDep = Annotated[Settings, Depends(settings_of)]
ClientDep = Annotated[Client, Depends(client_of)]
