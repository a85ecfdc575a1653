"""SQLite storage: the single source of truth of a study.

The driver process is the only writer. A lock file beside the database keeps a second driver
out, so every trial found RUNNING when a driver opens the study was left by a process that
died. ``path=None`` keeps the same tables in memory (``logdir=None``), so both share one code
path. Readers (``torchtune-hp trials``/``best``) open the file read-only and take no lock.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from torchtune_hp.trial import FrozenTrial, Origin, TrialState

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trials (
    number INTEGER PRIMARY KEY,
    state TEXT NOT NULL,
    params TEXT NOT NULL,
    value REAL,
    start TEXT,
    "end" TEXT,
    error TEXT,
    origin TEXT NOT NULL,
    interrupted INTEGER NOT NULL DEFAULT 0,
    note TEXT
);
CREATE TABLE IF NOT EXISTS intermediate (
    trial INTEGER NOT NULL REFERENCES trials(number),
    step INTEGER NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (trial, step)
);
CREATE TABLE IF NOT EXISTS queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    params TEXT NOT NULL,
    origin TEXT NOT NULL
);
"""


class StorageError(RuntimeError):
    """The database cannot be used: locked by another driver, or from a newer version."""


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _ts(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat()


def _dt(s: str | None) -> datetime | None:
    return None if s is None else datetime.fromisoformat(s)


class Storage:
    """Trials, intermediate values, the queue of parameters to try next, and study metadata."""

    def __init__(self, path: Path | None, *, read_only: bool = False) -> None:
        self.path = path
        self._lock_fd: int | None = None
        if path is None:
            self.conn = sqlite3.connect(":memory:", isolation_level=None)
        elif read_only:
            if not path.exists():
                raise FileNotFoundError(f"{path}: no study database here")
            self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._lock(path.with_name(path.name + ".lock"))
            self.conn = sqlite3.connect(str(path), isolation_level=None, timeout=30)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"{path}: schema version {version} is newer than this torchtune_hp "
                f"understands ({SCHEMA_VERSION}); upgrade torchtune-hp"
            )
        if not read_only:
            self.conn.executescript(_SCHEMA)
            self.conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _lock(self, lock_path: Path) -> None:
        import fcntl

        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StorageError(
                f"{lock_path.parent}: the study is being run by another process (pid {holder})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def close(self) -> None:
        self.conn.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # -- metadata ---------------------------------------------------------------------------
    def get_meta(self) -> dict[str, Any]:
        rows = self.conn.execute("SELECT key, value FROM meta").fetchall()
        return {k: json.loads(v) for k, v in rows}

    def set_meta(self, values: dict[str, Any]) -> None:
        with self._tx() as c:
            c.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                [(k, json.dumps(v)) for k, v in values.items()],
            )

    # -- trials -----------------------------------------------------------------------------
    @staticmethod
    def _insert_trial(
        c: sqlite3.Connection,
        params_json: str,
        origin: str,
        state: TrialState = TrialState.RUNNING,
        value: float | None = None,
        note: str | None = None,
    ) -> int:
        """Insert a trial with the next 0-based number (inside the caller's transaction)."""
        now = _ts(utcnow())
        number = c.execute("SELECT COALESCE(MAX(number) + 1, 0) FROM trials").fetchone()[0]
        c.execute(
            'INSERT INTO trials (number, state, params, value, start, "end", origin, note) '
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                number,
                state.value,
                params_json,
                value,
                now,
                None if state is TrialState.RUNNING else now,
                origin,
                note,
            ),
        )
        return int(number)

    def create_trial(self, params: dict[str, Any], origin: Origin, note: str | None = None) -> int:
        with self._tx() as c:
            return self._insert_trial(c, json.dumps(params), origin.value, note=note)

    def add_trial(self, params: dict[str, Any], value: float) -> int:
        """A trial evaluated elsewhere, recorded COMPLETE at once."""
        with self._tx() as c:
            return self._insert_trial(
                c, json.dumps(params), Origin.ADDED.value, TrialState.COMPLETE, value
            )

    def finish_trial(
        self,
        number: int,
        state: TrialState,
        value: float | None = None,
        error: str | None = None,
        interrupted: bool = False,
    ) -> None:
        with self._tx() as c:
            c.execute(
                'UPDATE trials SET state=?, value=?, error=?, interrupted=?, "end"=? '
                "WHERE number=? AND state=?",
                (
                    state.value,
                    value,
                    error,
                    int(interrupted),
                    _ts(utcnow()),
                    number,
                    TrialState.RUNNING.value,
                ),
            )

    def report(self, number: int, step: int, value: float) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT OR REPLACE INTO intermediate (trial, step, value) VALUES (?, ?, ?)",
                (number, step, value),
            )

    def trials(self) -> list[FrozenTrial]:
        inter: dict[int, dict[int, float]] = {}
        for t, step, v in self.conn.execute(
            "SELECT trial, step, value FROM intermediate ORDER BY trial, step"
        ):
            inter.setdefault(t, {})[step] = v
        rows = self.conn.execute(
            'SELECT number, state, params, value, start, "end", error, origin, interrupted, note '
            "FROM trials ORDER BY number"
        ).fetchall()
        return [
            FrozenTrial(
                number=n,
                state=TrialState(state),
                params=json.loads(params),
                value=value,
                start=_dt(start),
                end=_dt(end),
                error=error,
                origin=Origin(origin),
                interrupted=bool(interrupted),
                note=note,
                intermediate=inter.get(n, {}),
            )
            for n, state, params, value, start, end, error, origin, interrupted, note in rows
        ]

    # -- queue of parameters to try next ---------------------------------------------------
    def push_queue(self, params: dict[str, Any], origin: Origin) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO queue (params, origin) VALUES (?, ?)", (json.dumps(params), origin)
            )

    def pop_queue_into_trial(self) -> tuple[int, dict[str, Any], Origin] | None:
        """Take the oldest queued parameters and start a trial with them, atomically, so a
        crash between the two never loses or doubles them."""
        with self._tx() as c:
            row = c.execute("SELECT id, params, origin FROM queue ORDER BY id LIMIT 1").fetchone()
            if row is None:
                return None
            qid, params, origin = row
            c.execute("DELETE FROM queue WHERE id=?", (qid,))
            return self._insert_trial(c, params, origin), json.loads(params), Origin(origin)

    def queued(self) -> list[dict[str, Any]]:
        return [json.loads(p) for (p,) in self.conn.execute("SELECT params FROM queue")]

    def recover_running(self, reason: str) -> list[int]:
        """Mark every RUNNING trial FAILED (interrupted) and queue its parameters for one more
        try, unless it already was that retry. Returns the numbers it marked."""
        with self._tx() as c:
            rows = c.execute(
                "SELECT number, params, origin FROM trials WHERE state=?",
                (TrialState.RUNNING.value,),
            ).fetchall()
            for n, params, origin in rows:
                c.execute(
                    'UPDATE trials SET state=?, error=?, interrupted=1, "end"=? WHERE number=?',
                    (TrialState.FAILED.value, reason, _ts(utcnow()), n),
                )
                if origin != Origin.RETRY.value:
                    c.execute(
                        "INSERT INTO queue (params, origin) VALUES (?, ?)",
                        (params, Origin.RETRY.value),
                    )
        return [n for n, _, _ in rows]
