"""The one place that says how every process talks to Temporal: data converter and client.

Every client and worker in the project (worker, web app, CLI, devstack, tests) gets its data
converter from `data_converter(settings)` and its client from `connect(settings)`:

- with REFERRAL_ENCRYPTION_KEYS set: the pydantic converter plus `EncryptionCodec`
  (infra/codec.py; each referral's payloads under its own data key, infra/data_keys.py), and failure messages and stack traces moved into an encrypted payload
  too, so nothing readable about a person reaches the server;
- without keys: `EncryptionNotConfigured` is raised, unless REFERRAL_ALLOW_PLAINTEXT=true says
  plaintext is wanted (development only). `make run` creates a development key instead.

`metrics_runtime(settings)` is the worker's runtime with the SDK's Prometheus endpoint
(METRICS_PORT, 0 disables); `connect(settings, runtime=...)` puts the worker's client on it.
"""

from __future__ import annotations

import dataclasses

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from config.settings import Settings, get_settings
from infra.codec import EncryptionCodec

# Buckets of the project's histogram, in seconds: the demo policy's seconds up to two days.
ACCEPTANCE_BUCKETS = [1, 5, 15, 30, 60, 300, 900, 1800, 3600, 7200, 14400, 28800, 43200, 86400, 172800]


class EncryptionNotConfigured(RuntimeError):
    """No REFERRAL_ENCRYPTION_KEYS and no explicit REFERRAL_ALLOW_PLAINTEXT=true."""

    def __init__(self) -> None:
        super().__init__(
            "REFERRAL_ENCRYPTION_KEYS is not set: refusing to send personal data to Temporal unencrypted. "
            "Set it (`python -m infra.codec new-key` prints an entry) or, for development only, "
            "set REFERRAL_ALLOW_PLAINTEXT=true"
        )


class MetricsUnavailable(RuntimeError):
    """The Prometheus endpoint could not listen (the port is taken)."""


_codecs: dict[tuple[str, str], EncryptionCodec] = {}


def payload_codec(settings: Settings) -> EncryptionCodec | None:
    """The codec for these settings' keys and key table (one per pair per process), or None
    without keys. The referrals' data keys live in the project's database (Settings.data_keys_url)."""
    secret = settings.referral_encryption_keys
    text = secret.get_secret_value().strip() if secret is not None else ""
    if not text:
        return None
    url = settings.data_keys_url
    codec = _codecs.get((text, url))
    if codec is None:
        codec = _codecs[(text, url)] = EncryptionCodec.from_setting(text, url)
    return codec


def data_converter(settings: Settings | None = None) -> DataConverter:
    settings = settings or get_settings()
    codec = payload_codec(settings)
    if codec is None:
        if not settings.referral_allow_plaintext:
            raise EncryptionNotConfigured()
        return pydantic_data_converter
    return dataclasses.replace(
        pydantic_data_converter,
        payload_codec=codec,
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


def metrics_runtime(settings: Settings) -> Runtime | None:
    """A runtime serving Prometheus metrics on METRICS_HOST:METRICS_PORT, or None when 0."""
    if not settings.metrics_port:
        return None
    address = f"{settings.metrics_host}:{settings.metrics_port}"
    try:
        return Runtime(
            telemetry=TelemetryConfig(
                metrics=PrometheusConfig(
                    bind_address=address,
                    histogram_bucket_overrides={"time_to_acceptance_seconds": ACCEPTANCE_BUCKETS},
                )
            )
        )
    except ValueError as err:
        raise MetricsUnavailable(
            f"METRICS_PORT: cannot serve metrics on {address} ({err}); set METRICS_PORT to a free port, or 0 to disable"
        ) from None


async def connect(settings: Settings, runtime: Runtime | None = None) -> Client:
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=data_converter(settings),
        runtime=runtime,
    )
