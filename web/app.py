"""The web app: SMS webhooks, the JSON API, the coordinators' web form and reports, the partner page.

`uvicorn web.app:app`. Each part owns a router in its own module;
this file only assembles them and holds what they share: settings and the Temporal client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI
from temporalio.client import Client

from config.settings import Settings, get_settings
from infra.logs import configure_logging
from infra.temporal import EncryptionNotConfigured, connect
from ledger.store import LedgerStore
from web import methods
from web.routes import (
    api,
    auth,
    codec,
    erasure_api,
    erasure_pages,
    intake_form,
    partner_capacity,
    partner_page,
    referral_pages,
    report_pages,
    reports,
    sms_webhook,
)
from web.security import startup_checks


def create_app(settings: Settings | None = None, client: Client | None = None, ledger: LedgerStore | None = None) -> FastAPI:
    """`client` is given by tests; otherwise the app connects to Temporal at start-up. The ledger
    is LEDGER_DATABASE_URL's unless given."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if app.state.client is None:
            configure_logging(settings)
            try:
                app.state.client = await connect(settings)
            except EncryptionNotConfigured as err:
                # Refuse to start: the web app would send intakes to Temporal in plaintext.
                structlog.get_logger("web").error("web app refused to start", reason=str(err))
                raise
        # Before the first request: warnings about COORDINATOR_LOGINS, the shared session key.
        startup_checks(settings)
        yield

    app = FastAPI(title="Referral orchestrator", lifespan=lifespan)
    app.state.settings = settings
    app.state.client = client
    app.state.ledger = ledger

    for part in (sms_webhook, api, erasure_api, reports, auth, intake_form, referral_pages, erasure_pages, report_pages, partner_page, partner_capacity, codec):
        app.include_router(part.router)
    methods.install(app)  # a 405's Allow names every method of the path, not the first route's

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def __getattr__(name: str):
    # `uvicorn web.app:app` builds the app on first access, not at import.
    if name == "app":
        return create_app()
    raise AttributeError(name)
