"""`make run`: the whole product on one machine, in the foreground, until Ctrl-C.

    python -m starter.devstack

Starts, in this order, and stops in the reverse order:
1. the Temporal dev server (`<venv>/bin/temporal server start-dev`), its Web UI, state kept in
   `$REFERRAL_DATA_DIR/temporal.db` so open referrals survive a restart, and the referral search
   attributes registered;
2. a local SMTP server (aiosmtpd, in this process) that stores each email it receives as an
   `.eml` file under `$REFERRAL_DATA_DIR/outbox/mail/`;
3. the worker (`python worker.py`) and the web app (`uvicorn web.app:app`), with an
   environment for local use: the demo policy (deadlines in seconds), the SMS outbox, the local
   SMTP server, and dev tokens and secrets (kept in `$REFERRAL_DATA_DIR/dev-secrets.env`).

Ports and paths come from the settings: TEMPORAL_ADDRESS (its port), DEV_UI_PORT, SMTP_PORT,
WEB_PORT, REFERRAL_DATA_DIR. A setting the user already gave (environment or `.env`) is never
overridden, except TEMPORAL_ADDRESS, which always points the children at this dev server.
Children's output is shown prefixed with their name. SIGINT or SIGTERM stops everything and
exits 0; a child dying on its own stops the rest and exits 1.

Modules: `environment` (settings, dev secrets, ports, the data-dir lock), `temporal_server`,
`mail` (the local SMTP server), `processes` (children and their output), `guide` (the printout
when ready), `stack` (start, supervise, stop).
"""

from starter.devstack.stack import main
from starter.devstack.temporal_server import search_attribute_flags

__all__ = ["main", "search_attribute_flags"]
