"""Production config/ can change without breaking CI: the tests read their own operator data
(tests/fixtures/), never config/'s partner directory or policies.

- No test module names config/'s partners or policy files, except the invariant checks of
  tests/activities/test_directory.py (ids `config`), and two that only look at paths: the files
  compose mounts exist, `make run` picks config/'s by itself.
- A representative slice (the directory and policy tests, and a timer path of the lifecycle that
  expects the shelter offer to go to `cas-assoc` with a reminder at 12 h) passes in a copy of the
  project whose config/ an operator edited (`cas-assoc` renamed, a partner removed, every
  deadline changed), with REFERRAL_PARTNERS_FILE and REFERRAL_POLICY_FILE naming the edited
  files in the environment and in `.env`. The same slice fails once the edited policy replaces
  the tests' own: it does notice the data it reads.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
# What the slice needs of the project: the packages, the tests, the examples, pytest's settings.
PROJECT = ["activities", "config", "infra", "ledger", "standins", "starter", "web", "workflows", "tests", "examples", "worker.py", "pyproject.toml"]
SLICE = [
    "tests/activities/test_directory.py",
    "tests/workflows/test_lifecycle_timers.py::test_reminder_then_escalation_to_next_partner",
    "-k", "not config",  # the invariant checks of config/ itself are not the tests' business here
]  # fmt: skip

# Modules allowed to name config/'s operator files, and why.
READS_CONFIG = {
    "tests/activities/test_directory.py": "holds config/ to the documented invariants",
    "tests/test_deployment.py": "checks that the files compose mounts exist",
    "tests/test_devstack.py": "checks which files `make run` picks by itself",
    "tests/test_production_config.py": "this file",
}
NAMES_CONFIG_FILE = re.compile(
    r"""CONFIG_DIR\s*/\s*["'](partners|policy)|["'](\./)?config/(partners|policy)[\w.]*\.yaml["']|["']config["']\s*/\s*["'](partners|policy)"""
)


def test_no_test_reads_the_operators_partners_or_policy() -> None:
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        name = path.relative_to(REPO).as_posix()
        if name in READS_CONFIG:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if NAMES_CONFIG_FILE.search(line):
                offenders.append(f"{name}:{number}: {line.strip()}")
    assert offenders == [], "tests read config/'s operator data (use tests.fixtures):\n" + "\n".join(offenders)


def test_the_guard_sees_a_test_reading_config() -> None:
    assert NAMES_CONFIG_FILE.search('DIRECTORY = load_directory(CONFIG_DIR / "partners.yaml")')
    assert NAMES_CONFIG_FILE.search("policy = REPO / 'config' / 'policy.demo.yaml'")
    assert NAMES_CONFIG_FILE.search('Path("config/policy.yaml")')
    assert not NAMES_CONFIG_FILE.search('DIRECTORY = load_directory(PARTNERS_FILE)')


# --------------------------------------------------------------------------- an operator's edits


def edit_like_an_operator(config: Path) -> None:
    """Rename the Casablanca shelter, drop a national shelter, and change every deadline."""
    partners_file = config / "partners.yaml"
    partners = yaml.safe_load(partners_file.read_text(encoding="utf-8"))
    ids = [p["id"] for p in partners["partners"]]
    assert "cas-assoc" in ids and "nat-shelter-amane" in ids, "the fixtures and this test name these partners"
    partners["partners"] = [p for p in partners["partners"] if p["id"] != "nat-shelter-amane"]
    for p in partners["partners"]:
        if p["id"] == "cas-assoc":
            p["id"], p["name"] = "cas-espoir", "Association Espoir (was cas-assoc)"
    partners_file.write_text(yaml.safe_dump(partners, allow_unicode=True, sort_keys=False), encoding="utf-8")

    fields = ("reply_within", "remind_after", "checkin_answer_within", "escalated_alert_every")
    for name, durations, follow_ups in (
        ("policy.yaml", ("36h", "18h", "48h", "6h"), ["48h", "14d", "60d"]),
        ("policy.demo.yaml", ("45s", "20s", "30s", "30s"), ["15s", "30s", "50s"]),
    ):
        policy = {"urgencies": {u: dict(zip(fields, durations, strict=True)) for u in ("emergency", "urgent", "normal")}, "follow_ups": follow_ups}
        (config / name).write_text(yaml.safe_dump(policy, sort_keys=False), encoding="utf-8")


def copy_project(dest: Path) -> Path:
    for name in PROJECT:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__", "histories", "known_issues", ".hypothesis"))
        else:
            shutil.copy2(source, dest / name)
    return dest


def run(project: Path, env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=project, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_tests_pass_whatever_the_operator_does_to_config(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project")
    config = project / "config"
    edit_like_an_operator(config)
    operator = {"REFERRAL_PARTNERS_FILE": str(config / "partners.yaml"), "REFERRAL_POLICY_FILE": str(config / "policy.yaml")}
    (project / ".env").write_text("".join(f"{k}={v}\n" for k, v in operator.items()), encoding="utf-8")
    env = {**os.environ, **operator, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)

    # The copy is what runs: its config/ and its tests, not this checkout's.
    code = "import config.settings, tests.fixtures; print(config.settings.CONFIG_DIR); print(tests.fixtures.FIXTURES)"
    where = run(project, env, "-c", code)
    assert where.returncode == 0, where.stderr
    assert where.stdout.split() == [str(config), str(project / "tests" / "fixtures")]

    edited = run(project, env, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SLICE)
    assert edited.returncode == 0, edited.stdout[-4000:] + edited.stderr[-2000:]
    passed = re.search(r"(\d+) passed", edited.stdout)
    assert passed and int(passed.group(1)) > 100 and "failed" not in edited.stdout, edited.stdout[-2000:]

    # Control: the slice does read its data. The operator's policy put in the tests' place fails it.
    shutil.copy(config / "policy.yaml", project / "tests" / "fixtures" / "policy.yaml")
    control = run(project, env, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SLICE)
    assert control.returncode == 1, control.stdout[-4000:] + control.stderr[-2000:]
    for name in ("test_policy_durations_as_written", "test_reminder_then_escalation_to_next_partner"):
        assert re.search(rf"FAILED \S+::{name}\b", control.stdout), (name, control.stdout[-4000:])
