"""Every setting the code reads, from the environment (or a `.env` file).

Field names are the environment variable names in lower case, so a setting is found by
grepping for either spelling.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

CONFIG_DIR = Path(__file__).resolve().parent


class Settings(BaseSettings):
    # hide_input_in_errors: a bad setting's error never echoes its value (keys, tokens, secrets)
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False, hide_input_in_errors=True)

    # Temporal
    temporal_address: str = "localhost:7233"
    temporal_namespace: str = "default"
    referral_task_queue: str = "referrals"
    dev_ui_port: int = 8233  # make run: the dev server's Web UI (its gRPC port is TEMPORAL_ADDRESS's)
    # Referrals a worker keeps in memory between tasks (Temporal's sticky cache). 0, the default,
    # replays each referral's history for every task: slower, but immune to the SDK bug in which
    # a cached referral, advanced by a query during a worker crash, writes a history that no
    # worker can replay afterwards (README "Reliability"). Raise it only on an SDK that fixes it.
    worker_max_cached_referrals: int = Field(default=0, ge=0)
    # Workflow tasks a worker takes at once. Each replays a history (~0.1-0.2 s of CPU on one
    # Python thread), so a few at a time keeps each under its 10 s timeout; the rest wait on the
    # server, where no timeout runs. Scale out with more workers, not a larger number here.
    worker_max_concurrent_referral_tasks: int = Field(default=8, ge=2)

    # Payload encryption (infra/codec.py): comma-separated `kid:base64-of-32-bytes`; the first
    # encrypts, all decrypt. `python -m infra.codec new-key` prints an entry. Unset: the worker,
    # the web app and the CLI refuse to start unless REFERRAL_ALLOW_PLAINTEXT=true.
    referral_encryption_keys: SecretStr | None = None
    referral_allow_plaintext: bool = False
    # The Temporal UI's origin(s), comma-separated: allowed by CORS on the codec server (/codec)
    temporal_ui_origin: str = "http://localhost:8233"
    # The worker's Prometheus endpoint (http://<host>:<port>/metrics); 0 disables it
    metrics_port: int = Field(default=9464, ge=0, le=65535)
    metrics_host: str = "0.0.0.0"

    # Configuration files, read by activities so edits never break a running referral
    referral_policy_file: Path = CONFIG_DIR / "policy.yaml"
    referral_partners_file: Path = CONFIG_DIR / "partners.yaml"
    referral_messages_dir: Path = CONFIG_DIR / "messages"
    referral_data_dir: Path = Path(".data")
    # Deadlines in messages are written in this time zone, and partners' opening hours read in it
    referral_timezone: str = "Africa/Casablanca"

    # Email
    smtp_host: str = "localhost"
    smtp_port: int = 1025
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool = False
    smtp_timeout_seconds: float = 20.0
    email_from: str = "referrals@nrm.example.ma"

    # SMS
    sms_backend: Literal["outbox", "twilio"] = "outbox"
    twilio_account_sid: str | None = None
    twilio_auth_token: str | None = None
    twilio_from_number: str | None = None
    twilio_messaging_service_sid: str | None = None
    twilio_api_base_url: str | None = None
    twilio_send_timeout_seconds: float = 10.0

    # Web app (SMS webhooks, JSON API, web form)
    public_base_url: str = "http://localhost:8000"
    web_port: int = 8000
    referral_api_tokens: str = Field(default="", description="comma-separated bearer tokens")

    # Partner details page (issue 4): partner emails carry PUBLIC_BASE_URL/p/<token>, a link
    # signed under this key (activities/partner_links.py, infra/signing.py). Unset: emails carry
    # no link and the page refuses every token. Changing it invalidates every link sent.
    partner_link_secret: str | None = Field(default=None, min_length=32)
    partner_link_ttl_hours: int = Field(default=72, ge=1, le=24 * 90)

    # Web form (web/security.py, web/routes/): coordinators' logins and their session cookie.
    # `python -m web.security hash-password` prints a hash for COORDINATOR_LOGINS. Login `api`
    # also accepts any token of REFERRAL_API_TOKENS as its password.
    coordinator_logins: str = Field(
        default="", description="comma-separated login:$argon2id$v=19$m=...,t=...,p=...$<salt>$<hash> entries"
    )
    # Key of the session cookie and CSRF tokens; empty: a random key made once and kept in
    # REFERRAL_DATA_DIR/web-session.key (0600), shared by every web process using that directory
    web_session_secret: str = ""
    web_session_hours: float = 12.0

    # The ledger (ledger/): the de-identified record of every referral, kept until deleted.
    # SQLAlchemy URL: `sqlite:////path/ledger.sqlite3` or `postgresql+psycopg://user:password@host/db`
    # (the password URL-encoded). Unset: the SQLite file ledger.sqlite3 in REFERRAL_DATA_DIR.
    ledger_database_url: SecretStr | None = None
    # The referrals' data keys (infra/data_keys.py): unset, in the same database as the ledger
    # (the project's database). Set it to keep them in a database of their own, backed up on its
    # own schedule (README "Erasure and backups"); `referral ledger upgrade` migrates both.
    data_keys_database_url: SecretStr | None = None

    # Logs
    log_format: Literal["console", "json"] = "console"
    log_level: str = "INFO"

    @field_validator("referral_encryption_keys")
    @classmethod
    def _check_keys(cls, value: SecretStr | None) -> SecretStr | None:
        # An after-validator: a failure shows the value as SecretStr('**********'), never the key.
        if value is None or not value.get_secret_value().strip():
            return None
        from infra.codec import parse_keys

        parse_keys(value.get_secret_value())  # raises a ValueError naming the setting
        return value

    @property
    def ui_origins(self) -> list[str]:
        return [o.strip().rstrip("/") for o in self.temporal_ui_origin.split(",") if o.strip()]

    @property
    def ledger_url(self) -> str:
        """LEDGER_DATABASE_URL, or the SQLite file in REFERRAL_DATA_DIR. Holds a password: never log it."""
        if self.ledger_database_url is not None and self.ledger_database_url.get_secret_value().strip():
            return self.ledger_database_url.get_secret_value().strip()
        return f"sqlite:///{(self.referral_data_dir / 'ledger.sqlite3').resolve()}"

    @property
    def data_keys_url(self) -> str:
        """DATA_KEYS_DATABASE_URL, or the ledger's database. Holds a password: never log it."""
        if self.data_keys_database_url is not None and self.data_keys_database_url.get_secret_value().strip():
            return self.data_keys_database_url.get_secret_value().strip()
        return self.ledger_url

    @property
    def outbox_dir(self) -> Path:
        return self.referral_data_dir / "outbox"


@lru_cache
def get_settings() -> Settings:
    return Settings()
