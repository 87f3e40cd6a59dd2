"""A real PostgreSQL server for the tests: Debian's binaries (`make postgresql` installs the
`postgresql` package), a fresh cluster in a temporary directory, listening on 127.0.0.1 at a
free port, stopped and removed at the end. initdb refuses to run as root, so as root the server
runs as the `postgres` user the package creates (runuser). Durability is off (fsync): a test
cluster never outlives its run.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

BIN_DIRS = "/usr/lib/postgresql/*/bin"


def postgres_bin() -> Path | None:
    """The newest Debian PostgreSQL's bin directory with initdb, or None."""
    found = [Path(d) for d in glob.glob(BIN_DIRS) if (Path(d) / "initdb").is_file()]
    return max(found, key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0) if found else None


def why_unavailable() -> str | None:
    if postgres_bin() is None:
        return "Debian's PostgreSQL is not installed (/usr/lib/postgresql/*/bin/initdb): run `make postgresql` (apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root, and no `postgres` user to run the server as (the postgresql package creates it)"
        if shutil.which("runuser") is None:
            return "running as root without runuser (util-linux) to start the server as `postgres`"
    return None


@dataclass
class PostgresServer:
    port: int
    root: Path

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _admin(self):  # type: ignore[no-untyped-def]
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True)

    def create_database(self, prefix: str = "ledger") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with self._admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def dump(self, database: str) -> str:
        """pg_dump's plain SQL of a database: everything it holds, as text."""
        out = subprocess.run(
            [str(self.bin / "pg_dump"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "--no-password", database],
            check=True, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        return out.stdout

    @property
    def bin(self) -> Path:
        found = postgres_bin()
        assert found is not None
        return found


def _as_server_user(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@contextlib.contextmanager
def running_postgres(port: int) -> Iterator[PostgresServer]:
    bin_dir = postgres_bin()
    assert bin_dir is not None, why_unavailable()
    root = Path(tempfile.mkdtemp(prefix="ledger-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    data, log = root / "data", root / "server.log"
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    run = dict(check=True, capture_output=True, text=True, env=env, cwd=root)
    try:
        subprocess.run(
            _as_server_user([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync"]),
            timeout=120, **run,
        )  # fmt: skip
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        subprocess.run(
            _as_server_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", options, "start"]),
            timeout=90, **run,
        )  # fmt: skip
    except subprocess.CalledProcessError as err:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"PostgreSQL did not start: {err.stderr or err.stdout}") from None
    try:
        yield PostgresServer(port=port, root=root)
    finally:
        stop = _as_server_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"])
        subprocess.run(stop, check=False, capture_output=True, env=env, cwd=root, timeout=60)
        shutil.rmtree(root, ignore_errors=True)
