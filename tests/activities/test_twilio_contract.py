"""Every request TwilioSms sends passes Twilio's own OpenAPI description, checked by Stoplight Prism.

Prism (`prism mock --errors`) validates each request against `twilio_api_v2010.json`, the spec
Twilio publishes (shipped in the `@twilio-alpha/mcp` npm package), and answers 4xx with the
violations when a request does not conform. Both npm packages are installed once, at pinned
versions, into `.data/npm-tools` (git-ignored, kept between runs). Without `npm` the module is
skipped; any other installation problem fails it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from activities.twilio_sms import TwilioSms
from config.settings import Settings
from standins.twilio import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, DEFAULT_FROM_NUMBER, DEFAULT_MESSAGING_SERVICE_SID

pytestmark = [
    pytest.mark.filterwarnings("ignore:BasicAuth is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The 'auth' parameter is deprecated:DeprecationWarning"),
]

# 5.14.2 is the newest prism-cli that runs on Node 20 (5.15 and later need Node >= 24).
PRISM_CLI_VERSION = "5.14.2"
TWILIO_MCP_VERSION = "0.7.0"
ROOT = Path(__file__).resolve().parents[2]
NPM_DIR = ROOT / ".data" / "npm-tools"
SPEC_IN_PACKAGE = Path("node_modules/@twilio-alpha/mcp/twilio-oai/spec/json/twilio_api_v2010.json")
MESSAGES_PATH = "/2010-04-01/Accounts/{AccountSid}/Messages.json"
INSTALL_TIMEOUT = 900
START_TIMEOUT = 60

TO = "+212612345678"
BODY = "R-7K3Q9 · hébergement · URGENT · Tanger. Répondez A 7K3Q9 pour accepter."


def _installed_version(package: str) -> str | None:
    try:
        return json.loads((NPM_DIR / "node_modules" / package / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


def _installed() -> bool:
    return (
        _installed_version("@stoplight/prism-cli") == PRISM_CLI_VERSION
        and _installed_version("@twilio-alpha/mcp") == TWILIO_MCP_VERSION
        and (NPM_DIR / "node_modules" / ".bin" / "prism").exists()
    )


def install_npm_tools() -> Path:
    """Prism and Twilio's spec at the pinned versions, in NPM_DIR; returns the prism binary."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not on PATH: install Node.js (>= 18.20) and npm to run the Prism contract test")
    NPM_DIR.mkdir(parents=True, exist_ok=True)
    with (NPM_DIR / ".install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel runs install once
        if not _installed():
            command = [
                npm, "install", "--prefix", str(NPM_DIR), "--no-audit", "--no-fund", "--save-exact",
                "--ignore-scripts", "--loglevel=error",
                f"@stoplight/prism-cli@{PRISM_CLI_VERSION}", f"@twilio-alpha/mcp@{TWILIO_MCP_VERSION}",
            ]  # fmt: skip
            env = {**os.environ, "SCARF_ANALYTICS": "false"}
            try:
                done = subprocess.run(command, cwd=NPM_DIR, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
            except subprocess.TimeoutExpired:
                pytest.fail(f"npm install took over {INSTALL_TIMEOUT} s: {' '.join(command)}")
            if done.returncode != 0 or not _installed():
                pytest.fail(f"npm install failed ({done.returncode}): {' '.join(command)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return NPM_DIR / "node_modules" / ".bin" / "prism"


def find_spec() -> Path:
    spec = NPM_DIR / SPEC_IN_PACKAGE
    if spec.exists():
        return spec
    found = sorted((NPM_DIR / "node_modules" / "@twilio-alpha").rglob("twilio_api_v2010.json"))
    if not found:
        pytest.fail(f"twilio_api_v2010.json is not in @twilio-alpha/mcp@{TWILIO_MCP_VERSION} any more (looked for {SPEC_IN_PACKAGE})")
    return found[0]


def patched_spec(spec: Path, out_dir: Path) -> Path:
    """Twilio's spec, with one inaccuracy about Twilio's *responses* corrected.

    The list response declares `uri`, `first_page_uri`, `next_page_uri` and
    `previous_page_uri` as `format: uri`, but Twilio (and the spec's own example) returns
    relative URIs; with `--errors` Prism would turn its own example into a 500. Requests are
    validated against the spec as published.
    """
    document = json.loads(spec.read_text(encoding="utf-8"))
    listing = document["paths"][MESSAGES_PATH]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    for name in ("uri", "first_page_uri", "next_page_uri", "previous_page_uri"):
        listing["properties"][name].pop("format", None)
    out = out_dir / spec.name
    out.write_text(json.dumps(document), encoding="utf-8")
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Prism:
    process: subprocess.Popen
    base_url: str
    log_path: Path

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def log_after(self, offset: int, requests: int = 1, timeout: float = 5.0) -> str:
        """Prism's log from `offset`, once it holds the end of `requests` requests."""
        deadline = time.monotonic() + timeout
        while True:
            with self.log_path.open("rb") as fh:
                fh.seek(offset)
                text = fh.read().decode("utf-8", "replace")
            ends = len(re.findall(r"Responding with \"\d+\"|Request terminated", text))
            if ends >= requests or time.monotonic() > deadline:
                return text


@pytest.fixture(scope="module")
def prism(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prism]:
    binary = install_npm_tools()
    work = tmp_path_factory.mktemp("prism")
    spec = patched_spec(find_spec(), work)
    port = _free_port()
    log_path = work / "prism.log"
    env = {**os.environ, "NO_COLOR": "1", "FORCE_COLOR": "0"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(binary), "mock", "-h", "127.0.0.1", "-p", str(port), "--errors", str(spec)],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"prism exited with {process.returncode}:\n{log_path.read_text(errors='replace')[-3000:]}")
            # The log must be past the start-up lines, which come out after the port opens.
            if "Prism is listening" in log_path.read_text(errors="replace"):
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"prism did not listen within {START_TIMEOUT} s:\n{log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)
        yield Prism(process, f"http://127.0.0.1:{port}", log_path)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def settings_for(prism: Prism, tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = dict(
        sms_backend="twilio",
        referral_data_dir=tmp_path / "data",
        public_base_url="https://referrals.example.org",
        twilio_account_sid=DEFAULT_ACCOUNT_SID,
        twilio_auth_token=DEFAULT_AUTH_TOKEN,
        twilio_from_number=DEFAULT_FROM_NUMBER,
        twilio_api_base_url=prism.base_url,
        twilio_send_timeout_seconds=10,
    )
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def assert_valid(log: str, requests: int = 1) -> None:
    passed = log.count("The request passed the validation rules")
    assert passed == requests, f"Prism validated {passed} of {requests} requests:\n{log}"
    assert "did not pass the validation rules" not in log, log
    assert "✖" not in log and "⚠" not in log, log


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({}, id="from-number"),
        pytest.param({"twilio_from_number": None, "twilio_messaging_service_sid": DEFAULT_MESSAGING_SERVICE_SID}, id="messaging-service"),
        pytest.param({"twilio_messaging_service_sid": DEFAULT_MESSAGING_SERVICE_SID}, id="both"),
    ],
)
async def test_sends_pass_twilio_spec(prism: Prism, tmp_path: Path, overrides: dict) -> None:
    offset = prism.log_size()
    async with TwilioSms.from_settings(settings_for(prism, tmp_path, **overrides)) as sms:
        sid = await sms.send(TO, BODY, "contract/send")
    assert re.fullmatch(r"SM[0-9a-fA-F]{32}", sid)
    assert_valid(prism.log_after(offset))


async def test_duplicate_look_up_passes_twilio_spec(prism: Prism, tmp_path: Path) -> None:
    async with TwilioSms.from_settings(settings_for(prism, tmp_path)) as sms:
        offset = prism.log_size()
        assert await sms.find_sent(TO, BODY, datetime.now(UTC)) is None
        assert_valid(prism.log_after(offset))

        # The whole retry after an unknown outcome: the look-up, then the send.
        sms.attempts.put("contract/retry", {"since": datetime.now(UTC).isoformat(), "bodies": [], "sid": None})
        offset = prism.log_size()
        assert await sms.send(TO, BODY, "contract/retry")
        log = prism.log_after(offset, requests=2)
    assert "get /2010-04-01/" in log and "post /2010-04-01/" in log, log
    assert_valid(log, requests=2)


async def test_prism_rejects_an_invalid_request(prism: Prism) -> None:
    url = prism.base_url + MESSAGES_PATH.format(AccountSid=DEFAULT_ACCOUNT_SID)
    async with httpx.AsyncClient(auth=(DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN), timeout=10) as client:
        offset = prism.log_size()
        missing_to = await client.post(url, data={"From": DEFAULT_FROM_NUMBER, "Body": BODY})
        log = prism.log_after(offset)
        bad_service = await client.post(url, data={"To": TO, "MessagingServiceSid": "MG-not-a-sid", "Body": BODY})
    assert missing_to.status_code == 422, missing_to.text
    assert any(v["message"] == "Request body must have required property 'To'" for v in missing_to.json()["validation"])
    assert "did not pass the validation rules" in log
    assert bad_service.status_code == 422, bad_service.text
