"""Which SMS channel this deployment uses: `SMS_BACKEND=outbox` (a JSON-lines file) or `twilio`."""

from __future__ import annotations

from activities.sms import OutboxSms, SmsBackend
from activities.twilio_sms import TwilioSms
from config.settings import Settings


def build_sms_backend(settings: Settings) -> SmsBackend:
    if settings.sms_backend == "twilio":
        return TwilioSms.from_settings(settings)
    return OutboxSms(settings.outbox_dir)
