"""What the routes share, as FastAPI dependencies: the settings, the Temporal client and the ledger.

They are set on `app.state` by `web.app.create_app` (tests pass their own); the ledger's store is
made from LEDGER_DATABASE_URL on first use.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from temporalio.client import Client

from config.settings import Settings
from ledger.store import LedgerStore


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def client_of(request: Request) -> Client:
    client: Client = request.app.state.client
    return client


def ledger_of(request: Request) -> LedgerStore:
    store: LedgerStore | None = request.app.state.ledger
    if store is None:
        store = request.app.state.ledger = LedgerStore.from_settings(settings_of(request))
    return store


SettingsDep = Annotated[Settings, Depends(settings_of)]
ClientDep = Annotated[Client, Depends(client_of)]
LedgerDep = Annotated[LedgerStore, Depends(ledger_of)]
