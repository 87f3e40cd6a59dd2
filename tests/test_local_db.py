"""infra/local_db.py: the first opening of a fresh file while others open it too, in this
process or another."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from infra import local_db

SCHEMA = "CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY);"


def journal_mode(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        conn.close()


def hold_write_lock(path: Path) -> sqlite3.Connection:
    """A connection holding the write lock of a file not yet in WAL, as one switching it does."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN IMMEDIATE")
    return conn


def test_switching_to_wal_waits_for_another_connection_switching_it(tmp_path: Path):
    path = tmp_path / "x.sqlite3"
    holder = hold_write_lock(path)
    # SQLite itself refuses this at once, without its busy handler: what open_db must absorb.
    plain = sqlite3.connect(path, timeout=5)
    started = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        plain.execute("PRAGMA journal_mode=WAL")
    assert time.monotonic() - started < 1
    plain.close()
    threading.Timer(0.2, holder.close).start()
    started = time.monotonic()
    with local_db.open_db(path, SCHEMA) as conn:
        conn.execute("INSERT INTO t VALUES ('a')")
    assert 0.15 < time.monotonic() - started < 5
    assert journal_mode(path) == "wal"


def test_switching_to_wal_gives_up_after_the_busy_timeout(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(local_db, "BUSY_TIMEOUT_SECONDS", 0.3)
    path = tmp_path / "x.sqlite3"
    holder = hold_write_lock(path)
    try:
        started = time.monotonic()
        with pytest.raises(sqlite3.OperationalError, match="locked"), local_db.open_db(path, SCHEMA):
            pass
        assert time.monotonic() - started < 1
    finally:
        holder.close()


def _open_at_once(path: Path, barrier, errors) -> None:
    def one(key: str) -> None:
        try:
            with local_db.open_db(path, SCHEMA) as conn:
                conn.execute("INSERT INTO t VALUES (?)", (key,))
        except sqlite3.Error as err:
            errors.put(repr(err))

    threads = [threading.Thread(target=one, args=(f"{os.getpid()}-{i}",)) for i in range(3)]
    barrier.wait()
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_fresh_files_opened_at_once_by_several_processes_and_threads(tmp_path: Path):
    ctx = multiprocessing.get_context("spawn")
    errors = ctx.Queue()
    for round_ in range(5):
        path = tmp_path / f"fresh-{round_}.sqlite3"
        barrier = ctx.Barrier(3)
        procs = [ctx.Process(target=_open_at_once, args=(path, barrier, errors)) for _ in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
            assert p.exitcode == 0
        assert errors.empty(), errors.get()
        conn = sqlite3.connect(path)
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 9
        conn.close()
        assert journal_mode(path) == "wal"
