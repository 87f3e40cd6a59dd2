"""The payload codec (infra/codec.py), the key setting and the data converter wiring."""

from __future__ import annotations

import base64

import pytest
from pydantic import ValidationError
from temporalio.api.common.v1 import Payload

from config.settings import Settings
from infra.codec import (
    ENCODING,
    KEY_ID,
    EncryptionCodec,
    EncryptionKeyFormatError,
    PayloadDecryptionError,
    UnknownEncryptionKeyError,
    new_key_entry,
    parse_keys,
)
from infra.logs import reset_logging
from infra.temporal import EncryptionNotConfigured, data_converter
from tests.cases import NOTES, PHONE, PSEUDONYM, adult_intake
from workflows.models import ReferralInput

KEY_A = "key-a:" + base64.b64encode(bytes(range(32))).decode()
KEY_B = "key-b:" + base64.b64encode(bytes(range(100, 132))).decode()
RAW_A = base64.b64encode(bytes(range(32))).decode()


def payload(text: str = "hello") -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=f'"{text}"'.encode())


async def test_round_trip_with_key_id_and_fresh_nonce():
    codec = EncryptionCodec.from_setting(KEY_A)
    original = payload(PSEUDONYM)
    first, second = await codec.encode([original, original])
    assert first.metadata["encoding"] == ENCODING
    assert first.metadata[KEY_ID] == b"key-a"
    assert first.data[:12] != second.data[:12], "every payload gets its own nonce"
    assert PSEUDONYM.encode() not in first.data
    assert b"json/plain" not in first.data  # the original metadata is inside the ciphertext
    assert await codec.decode([first, second]) == [original, original]


async def test_rotation_first_key_encrypts_all_decrypt():
    old = EncryptionCodec.from_setting(KEY_A)
    rotated = EncryptionCodec.from_setting(f"{KEY_B},{KEY_A}")
    written_before = (await old.encode([payload()]))[0]
    written_after = (await rotated.encode([payload()]))[0]
    assert written_after.metadata[KEY_ID] == b"key-b"
    assert await rotated.decode([written_before, written_after]) == [payload(), payload()]


async def test_unknown_key_id_fails_clearly_without_the_payload():
    written = (await EncryptionCodec.from_setting(KEY_A).encode([payload(PSEUDONYM)]))[0]
    with pytest.raises(UnknownEncryptionKeyError) as err:
        await EncryptionCodec.from_setting(KEY_B).decode([written])
    message = str(err.value)
    assert "'key-a'" in message and "REFERRAL_ENCRYPTION_KEYS" in message
    assert err.value.key_id == "key-a"
    assert PSEUDONYM not in message and RAW_A not in message


async def test_tampered_or_wrong_key_with_same_id_fails_authentication():
    codec = EncryptionCodec.from_setting(KEY_A)
    written = (await codec.encode([payload()]))[0]
    tampered = Payload()
    tampered.CopyFrom(written)
    tampered.data = written.data[:-1] + bytes([written.data[-1] ^ 1])
    with pytest.raises(PayloadDecryptionError, match="failed authentication"):
        await codec.decode([tampered])
    impostor = EncryptionCodec.from_setting("key-a:" + base64.b64encode(bytes(32)).decode())
    with pytest.raises(PayloadDecryptionError, match="key-a"):
        await impostor.decode([written])
    # The key id is authenticated too: relabelling a payload under another known id fails.
    both = EncryptionCodec.from_setting(f"{KEY_A},{'key-b:' + RAW_A}")
    relabelled = Payload()
    relabelled.CopyFrom(written)
    relabelled.metadata[KEY_ID] = b"key-b"
    with pytest.raises(PayloadDecryptionError):
        await both.decode([relabelled])


async def test_plaintext_payloads_pass_through_on_decode():
    codec = EncryptionCodec.from_setting(KEY_A)
    assert await codec.decode([payload()]) == [payload()]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", "no key given"),
        ("justakey", "entry 1 is not kid:base64-key"),
        (f"{KEY_A},bad id:{RAW_A}", "entry 2: the key id"),
        ("short:" + base64.b64encode(b"0123456789").decode(), "must be 32 bytes"),
        ("nobase64:!!!not*base64!!!", "not valid base64"),
        (f"{KEY_A},{KEY_A}", "listed twice"),
    ],
)
def test_malformed_keys_name_the_setting_never_the_key(text, expected):
    with pytest.raises(EncryptionKeyFormatError) as err:
        parse_keys(text)
    assert "REFERRAL_ENCRYPTION_KEYS" in str(err.value) and expected in str(err.value)
    assert RAW_A not in str(err.value)


def test_settings_validate_the_keys_without_echoing_them():
    secret = "k1:" + base64.b64encode(b"sixteen byte key").decode()
    with pytest.raises(ValidationError) as err:
        Settings(_env_file=None, referral_encryption_keys=secret)  # type: ignore[call-arg]
    assert "REFERRAL_ENCRYPTION_KEYS" in str(err.value)
    assert secret not in str(err.value) and secret.split(":")[1] not in str(err.value)
    ok = Settings(_env_file=None, referral_encryption_keys=new_key_entry("k2"))  # type: ignore[call-arg]
    assert "k2:" not in repr(ok) and "k2:" not in str(ok.model_dump())


def test_new_key_entry_parses():
    kid, key = parse_keys(new_key_entry("2027-01"))[0]
    assert kid == "2027-01" and len(key) == 32


async def test_no_key_refuses_unless_plaintext_is_explicitly_allowed():
    with pytest.raises(EncryptionNotConfigured, match="REFERRAL_ALLOW_PLAINTEXT"):
        data_converter(Settings(_env_file=None, referral_encryption_keys=None))  # type: ignore[call-arg]
    plain = data_converter(Settings(_env_file=None, referral_encryption_keys=None, referral_allow_plaintext=True))  # type: ignore[call-arg]
    assert plain.payload_codec is None


async def test_the_converter_encrypts_workflow_inputs_and_failures():
    converter = data_converter(Settings(_env_file=None, referral_encryption_keys=KEY_A))  # type: ignore[call-arg]
    (encoded,) = await converter.encode([ReferralInput(code="7K3Q9", intake=adult_intake())])
    for secret in (PSEUDONYM, PHONE, PHONE.lstrip("+"), NOTES):
        assert secret.encode() not in encoded.data
    assert encoded.metadata[KEY_ID] == b"key-a"
    (decoded,) = await converter.decode([encoded], [ReferralInput])
    assert decoded.intake.person.pseudonym == PSEUDONYM

    from temporalio.api.failure.v1 import Failure
    from temporalio.exceptions import ApplicationError

    failure = Failure()
    await converter.encode_failure(ApplicationError(f"boom about {PSEUDONYM}", type="X"), failure)
    assert PSEUDONYM not in failure.message and PSEUDONYM not in failure.SerializeToString().decode("latin-1")
    assert failure.application_failure_info.type == "X"  # the type stays readable


async def test_worker_and_web_app_refuse_to_start_without_a_key(tmp_path):
    from web.app import create_app
    from worker import run_worker

    bare = Settings(_env_file=None, referral_encryption_keys=None, referral_data_dir=tmp_path, metrics_port=0)  # type: ignore[call-arg]
    with pytest.raises(EncryptionNotConfigured):
        await run_worker(bare)
    app = create_app(bare)
    try:
        with pytest.raises(EncryptionNotConfigured):
            async with app.router.lifespan_context(app):
                pass
    finally:
        reset_logging()  # the lifespan configured this process's logging
