"""SQLite storage: the single source of truth of a study.

The driver process is the only writer (the study folder's lock, :class:`~torchtune_hp.files.
StudyLock`, keeps a second driver out), so every trial found RUNNING when a driver opens the
study was left by a process that died. ``path=None`` keeps the same tables in memory
(``logdir=None``), so both share one code path. Readers (``torchtune-hp trials``/``best``, DDP
followers) open the file read-only and take no lock; a study on read-only media is read too.

A file that is not a study database, or a damaged one, is refused before anything is written to
it: every byte stays as it was.

A writer checks before each transaction (and when it closes) that its file is still where it
opened it. SQLite writes on through its open descriptors after the file is deleted (a cleanup
script, ``rm -r logs/...`` while a study runs), and closing then loses every trial. So a missing
file is written again from the open database, whole, with a warning, and the study goes on;
a different file put in its place is left alone, and the open database is saved beside it.
The write-ahead log (``study.db-wal``) gets the same care: until SQLite checkpoints it, every
trial of a short study lives in it alone, so its deletion followed by a crash lost the whole
study. Each finished trial is checkpointed into the file (where no reader holds it then), and
a log found deleted or replaced gets what a deleted file gets: the database written again,
whole, from the open connection. A reader open since before that (a DDP follower) opens the
new file when it finds the old one gone from its path.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import tempfile
import time
import urllib.parse
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from torchtune_hp.errors import StorageError
from torchtune_hp.trial import FrozenTrial, Interruption, Origin, TrialState

# a queued point made whole: its parameters, origin and note (see pop_queue_into_trial)
Completed = tuple[dict[str, Any], Origin, str | None]

# how long a reader waits for a running driver to write its database again (see _connect)
LOG_REWRITE_WAIT_S = 6.0

SCHEMA_VERSION = 3
SQLITE_HEADER = b"SQLite format 3\x00"

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
    note TEXT,
    interruption TEXT,
    process TEXT,
    paused_s REAL,
    seen TEXT
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

# Each older version's steps to the next. Version 1 had no interruption kind (every
# interrupted trial counted as "died") and no process record; version 2 no paused seconds (a
# resumed trial's duration counted its pause) and no last report time (a trial whose driver
# died ended when the next driver found it, however long after: a RUNNING one still does, as
# when it was written, its last sign of life unknown).
_MIGRATE = {
    1: """
ALTER TABLE trials ADD COLUMN interruption TEXT;
ALTER TABLE trials ADD COLUMN process TEXT;
UPDATE trials SET interruption = 'died' WHERE interrupted = 1;
""",
    2: """
ALTER TABLE trials ADD COLUMN paused_s REAL;
ALTER TABLE trials ADD COLUMN seen TEXT;
UPDATE trials SET seen = strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now') WHERE state = 'RUNNING';
""",
}

_PUT_META = "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)"
# SET clause that appends a line (twice as a parameter: empty note, else note + newline + it)
_APPEND_NOTE = "note = CASE WHEN note IS NULL OR note = '' THEN ? ELSE note || char(10) || ? END"

_COLUMNS = (
    'number, state, params, value, start, "end", error, origin, interruption, note, process, '
    "paused_s"
)
# The same row from an older file, read where it cannot be upgraded (a reader, read-only media)
_COLUMNS_OF = {
    1: (
        'number, state, params, value, start, "end", error, origin, '
        "CASE WHEN interrupted = 1 THEN 'died' END, note, NULL, NULL"
    ),
    2: 'number, state, params, value, start, "end", error, origin, interruption, note, process, '
    "NULL",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _ts(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat()


def _dt(s: str | None) -> datetime | None:
    return None if s is None else datetime.fromisoformat(s)


def damaged(path: Path | str, why: str = "") -> StorageError:
    detail = f" ({why})" if why else ""
    return StorageError(f"{path}: not a study database, or damaged{detail}; left untouched")


class Storage:
    """Trials, intermediate values, the queue of parameters to try next, and study metadata."""

    def __init__(
        self,
        path: Path | None,
        *,
        read_only: bool = False,
        before_restore: Callable[[], None] | None = None,
    ) -> None:
        """``before_restore``: called before a deleted file is written again, its folder made
        again if it was deleted too (the study's lock follows the folder)."""
        self.path = path
        self.read_only = read_only
        self.before_restore = before_restore
        self._columns = _COLUMNS
        self._copy: tempfile.TemporaryDirectory[str] | None = None
        if path is not None:
            _check_header(path, must_exist=read_only)
        try:
            self.conn = self._connect(path, read_only)
        except sqlite3.DatabaseError as e:
            raise self._error(e) from None
        self._identity = _identity(path) if path is not None and not read_only else None
        self._opened = _identity(path) if path is not None else None  # what a reader reads
        self._wal_identity = self._wal_now()
        try:
            with self._errors():
                self._check_and_migrate()
        except BaseException:
            self.close()
            raise

    def _connect(self, path: Path | None, read_only: bool) -> sqlite3.Connection:
        if path is None:
            return _sqlite(":memory:")
        if not read_only:
            if path.exists() and path.stat().st_size > 0:
                # checked through a read-only connection: closing a read-write one on a damaged
                # file would fold its write-ahead log into it, which "left untouched" forbids
                _validate(sqlite3.connect(_uri(path, "mode=ro"), uri=True), path, close=True)
            conn = _sqlite(str(path), timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            return conn
        # A write-ahead log deleted under a running driver reads as an I/O error until the
        # driver writes the database again, at its next write (a heartbeat within 5 s): wait
        # that long before saying so.
        deadline = time.monotonic() + LOG_REWRITE_WAIT_S
        while True:
            try:
                conn = _sqlite(_uri(path, "mode=ro"), uri=True)
                _validate(conn, path)
                return conn
            except sqlite3.OperationalError:
                break
            except StorageError as e:
                if "disk I/O" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        # Read-only media: SQLite cannot create the shared-memory file a WAL database needs.
        # Without a write-ahead log the file is complete: read it as immutable. With one, read
        # a private copy of both, so the latest trials are not missed.
        wal = _wal_of(path)
        if not (wal.exists() and wal.stat().st_size > 0):
            conn = _sqlite(_uri(path, "immutable=1"), uri=True)
        else:
            self._copy = tempfile.TemporaryDirectory(prefix="torchtune_hp_ro_")
            copy = Path(self._copy.name) / path.name
            shutil.copyfile(path, copy)
            shutil.copyfile(wal, copy.with_name(copy.name + "-wal"))
            conn = _sqlite(_uri(copy, "mode=ro"), uri=True)
        _validate(conn, path)
        return conn

    def _check_and_migrate(self) -> None:
        conn = self.conn
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"{self.path}: schema version {version} is newer than this torchtune_hp "
                f"understands ({SCHEMA_VERSION}); upgrade torchtune-hp"
            )
        if self.read_only:
            if version == 0:  # created this instant by a driver that has not written it yet
                raise FileNotFoundError(f"{self.path}: holds no study yet")
            self._columns = _COLUMNS_OF.get(version, _COLUMNS)
            return
        steps = [_SCHEMA] if version == 0 else [_MIGRATE[v] for v in range(version, SCHEMA_VERSION)]
        with self._tx() as c:
            for statement in ";".join(steps).split(";"):
                if statement.strip():
                    c.execute(statement)
            c.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _keep_file(self) -> None:
        """Write the database again where it was opened if it was deleted (or moved) since
        (see the module docstring); save it beside a different file put in its place, and
        stop. Where the file cannot be written again, the study stops with the reason and
        the open database is saved wherever it can be, named in the message."""
        if self._identity is None or self.path is None:
            return
        try:
            now = _identity(self.path)
        except OSError:  # cannot tell now (a network file system's hiccup): SQLite writes on
            return
        if now == self._identity:
            self._keep_log()
            return
        self._identity = None  # one attempt: whatever happens next, not again on each write
        gone = f"{self.path} was deleted (or moved) while the study ran"
        if now is not None:
            saved = self._save_copy(_open_copy(self.path))
            raise StorageError(
                f"{self.path} was replaced by another file while the study ran; left it alone "
                f"and saved this study's database as {saved} (every trial so far)"
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.before_restore is not None:
                self.before_restore()  # the folder's lock first: no second driver gets in
            self._save_copy(self.path, replace=False)
        except (OSError, StorageError) as e:
            try:  # another driver took the remade folder, say: keep the trials beside anyway
                where = f"; saved as {self._save_copy(_open_copy(self.path))}"
            except (OSError, StorageError):
                where = ""
            raise StorageError(f"{gone}, and it cannot be written again: {e}{where}") from None
        self._open_copy_instead(gone, stacklevel=5)

    def _open_copy_instead(self, gone: str, stacklevel: int) -> None:
        """Put the whole copy of the open database (see :meth:`_save_copy`, made beside the
        file) in the file's place and go on with it, with a warning (``stacklevel``: at the
        write that found it, past ``_tx``); the old one's write-ahead log and its index go
        with the old connection."""
        assert self.path is not None
        trials = self.conn.execute("SELECT COUNT(*) FROM trials").fetchone()[0]
        tmp = _tmp_of(self.path)
        self.conn.close()  # takes the deleted file's write-ahead log with it, before the new one
        try:
            for stale in (_wal_of(self.path), self.path.with_name(self.path.name + "-shm")):
                with contextlib.suppress(FileNotFoundError):  # a reader's: not the new file's
                    os.unlink(stale)
            os.replace(tmp, self.path)
            self.conn = self._connect(self.path, read_only=False)
        except (OSError, sqlite3.Error) as e:
            raise StorageError(
                f"{gone}; its trials were copied to {tmp if tmp.exists() else self.path} but "
                f"it cannot be opened again: {e}"
            ) from None
        self._identity = _identity(self.path)
        self._wal_identity = self._wal_now()
        warnings.warn(
            f"{gone}: written again from the open database ({trials} trials); nothing was lost",
            RuntimeWarning,
            stacklevel=stacklevel,
        )

    def _wal_now(self) -> tuple[int, int] | None:
        """Which file the write-ahead log is now; None when there is none (or no writer).
        Where that cannot be told (a network file system's hiccup), the one it was."""
        if self._identity is None or self.path is None:
            return None
        try:
            return _identity(_wal_of(self.path))
        except OSError:
            return self._wal_identity

    def _keep_log(self) -> None:
        """Write the database again, whole, where its write-ahead log was deleted (or
        replaced) since it was opened: SQLite writes on into the deleted log, whose trials
        the file lacks (all of them, before a checkpoint), so readers see a study without
        them and a crash would lose them. A checkpoint cannot fold it in where a reader holds
        part of it, and a reader's index of the deleted log stays behind it; a whole copy
        through the open connection (SQLite's backup) is complete whoever reads."""
        assert self.path is not None
        now = self._wal_now()
        if now == self._wal_identity:
            return
        if self._wal_identity is None:  # made by the first write since the database opened
            self._wal_identity = now
            return
        gone = f"{_wal_of(self.path)} was deleted (or replaced) while the study ran"
        self._wal_identity = now  # one attempt, as for the file itself
        try:
            self._save_copy(self.path, replace=False)
        except (OSError, StorageError) as e:
            raise StorageError(f"{gone}, and the database cannot be written again: {e}") from None
        self._open_copy_instead(gone, stacklevel=6)

    def checkpoint(self) -> None:
        """Fold the write-ahead log into the file (SQLite does it only every 1000 pages, so a
        short study lived in the log alone). A failure is left for SQLite's next try: the
        log still holds everything."""
        if self._identity is None:
            return
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _save_copy(self, target: Path, replace: bool = True) -> Path:
        """The open database, whole, into a temporary file beside ``target``, renamed to it
        when ``replace`` (else left for the caller); a failed copy leaves nothing behind."""
        tmp = _tmp_of(target)
        try:
            with self._errors():
                copy = sqlite3.connect(str(tmp))
                try:
                    self.conn.backup(copy)
                finally:
                    copy.close()
            if replace:
                os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return target

    def close(self) -> None:
        conn = getattr(self, "conn", None)
        if conn is not None:
            try:
                self._keep_file()
            except (OSError, StorageError, sqlite3.Error) as e:
                warnings.warn(str(e), RuntimeWarning, stacklevel=2)
            conn = self.conn
            conn.close()
        if self._copy is not None:
            self._copy.cleanup()
            self._copy = None

    def closed_error(self) -> StorageError:
        """What using a closed study says."""
        return StorageError(
            f"{self.path or ':memory:'}: this study is closed (its close(), or another Study "
            "object of this process opened the same folder since: use that one)"
        )

    def _error(self, e: sqlite3.Error) -> StorageError:
        text = str(e)
        if isinstance(e, sqlite3.ProgrammingError) and "closed database" in text:
            return self.closed_error()
        if isinstance(e, sqlite3.DatabaseError) and (
            "not a database" in text or "malformed" in text
        ):
            return damaged(self.path or ":memory:", text)
        return StorageError(f"{self.path or ':memory:'}: {text}")

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """SQLite's errors (a full disk, a damaged file) as a StorageError naming the file."""
        try:
            yield
        except sqlite3.Error as e:
            raise self._error(e) from None

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._keep_file()
        with self._errors():
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        follows = self.read_only and self.path is not None and self._copy is None
        if follows and self._file_moved():
            self._read_again()
        try:
            return self.conn.execute(sql, args).fetchall()
        except sqlite3.OperationalError as e:
            if not follows:
                raise self._error(e) from None
        except sqlite3.Error as e:
            raise self._error(e) from None
        self._read_again()  # an index of a log the driver has replaced: an I/O error
        with self._errors():
            return self.conn.execute(sql, args).fetchall()

    def _file_moved(self) -> bool:
        """Whether the file a reader opened is no longer the one at its path: the driver
        wrote the database again in its place (see :meth:`_open_copy_instead`), and a reader
        open since (a DDP follower, for the whole run) would read the old one for ever."""
        assert self.path is not None
        try:
            return _identity(self.path) not in (self._opened, None)
        except OSError:
            return False

    def _read_again(self) -> None:
        assert self.path is not None
        self.conn.close()
        self.conn = self._connect(self.path, read_only=True)
        self._opened = _identity(self.path)

    # -- metadata ---------------------------------------------------------------------------
    def get_meta(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self._read("SELECT key, value FROM meta")}

    def set_meta(self, values: dict[str, Any]) -> None:
        with self._tx() as c:
            c.executemany(_PUT_META, [(k, json.dumps(v)) for k, v in values.items()])

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
            number = self._insert_trial(
                c, json.dumps(params), Origin.ADDED.value, TrialState.COMPLETE, value
            )
        self.checkpoint()
        return number

    def finish_trial(
        self,
        number: int,
        state: TrialState,
        value: float | None = None,
        error: str | None = None,
        interruption: Interruption | None = None,
    ) -> bool:
        """Record how a RUNNING trial ended; False when it was not RUNNING (told already)."""
        with self._tx() as c:
            cursor = c.execute(
                "UPDATE trials SET state=?, value=?, error=?, interrupted=?, interruption=?, "
                '"end"=? WHERE number=? AND state=?',
                (
                    state.value,
                    value,
                    error,
                    int(interruption is not None),
                    None if interruption is None else interruption.value,
                    _ts(utcnow()),
                    number,
                    TrialState.RUNNING.value,
                ),
            )
            ended = cursor.rowcount == 1
        self.checkpoint()  # the file itself holds every finished trial
        return ended

    def reopen_trial(self, number: int, note: str) -> bool:
        """Run a PRUNED (paused) trial again from where it stopped: RUNNING, its reports kept,
        ``note`` appended, the time since it paused added to its paused seconds (not part of
        its duration), and its number with the step it paused at added to the ``resumed``
        metadata, so a driver that is stopped or dies while it runs pauses it again at that
        step (:meth:`recover_running`) instead of losing it. False when the trial is not
        PRUNED."""
        now = utcnow()
        with self._tx() as c:
            row = c.execute(
                'SELECT "end" FROM trials WHERE number=? AND state=?',
                (number, TrialState.PRUNED.value),
            ).fetchone()
            if row is None:
                return False
            end = _dt(row[0])
            pause = 0.0 if end is None else max(0.0, (now - end).total_seconds())
            c.execute(
                f'UPDATE trials SET state=?, value=NULL, error=NULL, "end"=NULL, {_APPEND_NOTE}, '
                "paused_s=COALESCE(paused_s, 0) + ?, seen=? WHERE number=?",
                (TrialState.RUNNING.value, note, note, pause, _ts(now), number),
            )
            (paused_at,) = c.execute(
                "SELECT MAX(step) FROM intermediate WHERE trial=?", (number,)
            ).fetchone()
            self._put_resumed(c, {**self._resumed(c), number: paused_at})
            self._forget_pausing(c, [number])
            return True

    def told_to_pause(self, number: int, step: int | None, since: float | None = None) -> None:
        """A trial run again after a pause was told to pause again at ``step``, so its state is
        saved there: a stop before it ends pauses it at ``step``, not at its earlier pause.
        ``since``: when it was told (a function or a Lightning trial saves only then, which
        may take a while): until its checkpoint is newer, a stop may come before the save, so
        the step saved before is kept too (see :meth:`unsaved_pauses`). None: saved at
        ``step`` already (a script that saves every epoch; a save found not made, at the step
        saved before)."""
        with self._tx() as c:
            resumed = self._resumed(c)
            if number in resumed:
                pausing = self._pausing(c)
                if since is None:
                    pausing.pop(number, None)
                else:  # the step saved before stays the one before the first such verdict
                    pausing[number] = (since, pausing.get(number, (since, resumed[number]))[1])
                self._put_pausing(c, pausing)
                self._put_resumed(c, {**resumed, number: step})

    def unsaved_pauses(self) -> dict[int, tuple[float, int | None]]:
        """The RUNNING trials told to pause again whose save may not have happened: each with
        when it was told and the step its state was saved at before."""
        with self._tx() as c:
            running = {
                n
                for (n,) in c.execute(
                    "SELECT number FROM trials WHERE state=?", (TrialState.RUNNING.value,)
                )
            }
            return {n: e for n, e in self._pausing(c).items() if n in running}

    @staticmethod
    def _pausing(c: sqlite3.Connection) -> dict[int, tuple[float, int | None]]:
        row = c.execute("SELECT value FROM meta WHERE key='pausing'").fetchone()
        data = json.loads(row[0]) if row else {}
        return {int(n): (float(e[0]), e[1]) for n, e in data.items()}

    @staticmethod
    def _put_pausing(c: sqlite3.Connection, pausing: dict[int, tuple[float, int | None]]) -> None:
        c.execute(_PUT_META, ("pausing", json.dumps({str(n): e for n, e in pausing.items()})))

    @staticmethod
    def _put_resumed(c: sqlite3.Connection, resumed: dict[int, int | None]) -> None:
        c.execute(_PUT_META, ("resumed", json.dumps({str(n): s for n, s in resumed.items()})))

    def _forget_pausing(self, c: sqlite3.Connection, numbers: list[int]) -> None:
        """Their told-to-pause records end (they ended, or run again from a new pause)."""
        pausing, gone = self._pausing(c), set(numbers)
        if gone & set(pausing):
            self._put_pausing(c, {n: e for n, e in pausing.items() if n not in gone})

    @staticmethod
    def _resumed(c: sqlite3.Connection) -> dict[int, int | None]:
        """The trials run again after a pause, each with the step it had paused at (None in a
        study written before that was kept: a list of numbers)."""
        row = c.execute("SELECT value FROM meta WHERE key='resumed'").fetchone()
        data = json.loads(row[0]) if row else {}
        if isinstance(data, list):
            return {int(n): None for n in data}
        return {int(n): None if s is None else int(s) for n, s in data.items()}

    def report(self, number: int, step: int, value: float, restart: bool = False) -> None:
        """Keep a report, and its time as the trial's last sign of life (see
        :meth:`recover_running`); ``restart``: the run trains its curve anew from this step,
        so the reports after it (of a run whose state is gone) are dropped with it."""
        with self._tx() as c:
            if restart:
                self._drop_after(c, number, step)
            c.execute(
                "INSERT OR REPLACE INTO intermediate (trial, step, value) VALUES (?, ?, ?)",
                (number, step, value),
            )
            c.execute("UPDATE trials SET seen=? WHERE number=?", (_ts(utcnow()), number))

    def still_running(self) -> None:
        """The driver's heartbeat: every RUNNING trial is alive now, its last sign of life (see
        :meth:`recover_running`) for a trial that reports nothing until it ends. Best effort:
        a write that fails (a full disk, a lock held too long) is warned of, not raised, as a
        hint must not end a study; a database replaced or deleted is handled first, as for
        every write."""
        self._keep_file()
        try:
            with self._tx() as c:
                c.execute(
                    "UPDATE trials SET seen=? WHERE state=?",
                    (_ts(utcnow()), TrialState.RUNNING.value),
                )
        except StorageError as e:
            with contextlib.suppress(sqlite3.Error):
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
            warnings.warn(f"the trials' heartbeat was not written: {e}", RuntimeWarning, 2)

    def add_waiting(self, number: int, seconds: float) -> None:
        """Time a RUNNING trial spent waiting to be placed (on a busy Ray cluster), or for the
        driver to draw the model's pictures before handing it out, kept with its paused time:
        not part of its duration, as it did not run."""
        with self._tx() as c:
            c.execute(
                "UPDATE trials SET paused_s=COALESCE(paused_s, 0) + ? WHERE number=? AND state=?",
                (max(0.0, seconds), number, TrialState.RUNNING.value),
            )

    def drop_reports(self, number: int, after: int | None) -> int:
        """Remove a trial's reports after step ``after`` (all of them with None); returns how
        many there were."""
        with self._tx() as c:
            return self._drop_after(c, number, -1 if after is None else after)

    @staticmethod
    def _drop_after(c: sqlite3.Connection, number: int, step: int) -> int:
        return c.execute(
            "DELETE FROM intermediate WHERE trial=? AND step>?", (number, step)
        ).rowcount

    def back_to_pause(self, number: int) -> int | None:
        """A resumed trial's reports after the step its state was saved at (where it paused,
        or was told to pause again) dropped, as :meth:`recover_running` does for a stopped
        one; returns that step (None where the study does not know it)."""
        with self._tx() as c:
            at = self._resumed(c).get(number)
            if at is not None:
                self._drop_after(c, number, at)
            return at

    def add_note(self, number: int, text: str) -> None:
        """Append a line to a trial's note (what the driver noticed about its output)."""
        with self._tx() as c:
            c.execute(
                f"UPDATE trials SET {_APPEND_NOTE} WHERE number=?",
                (text, text, number),
            )

    def set_process(self, number: int, process: dict[str, Any]) -> None:
        """Where a trial's process group runs (see :mod:`torchtune_hp.procs`)."""
        with self._tx() as c:
            c.execute("UPDATE trials SET process=? WHERE number=?", (json.dumps(process), number))

    def trial(self, number: int) -> FrozenTrial:
        rows = self._read(f"SELECT {self._columns} FROM trials WHERE number=?", (number,))
        if not rows:
            raise KeyError(f"no trial {number} in {self.path or 'this study'}")
        steps = self._read(
            "SELECT trial, step, value FROM intermediate WHERE trial=? ORDER BY step", (number,)
        )
        return _frozen(rows[0], {step: v for _, step, v in steps})

    def trials(self) -> list[FrozenTrial]:
        inter: dict[int, dict[int, float]] = {}
        for t, step, v in self._read(
            "SELECT trial, step, value FROM intermediate ORDER BY trial, step"
        ):
            inter.setdefault(t, {})[step] = v
        rows = self._read(f"SELECT {self._columns} FROM trials ORDER BY number")
        return [_frozen(row, inter.get(row[0], {})) for row in rows]

    # -- queue of parameters to try next ---------------------------------------------------
    def push_queue(self, params: dict[str, Any], origin: Origin) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO queue (params, origin) VALUES (?, ?)", (json.dumps(params), origin)
            )

    def pop_queue_into_trial(
        self, complete: Callable[[dict[str, Any], Origin], Completed | None]
    ) -> tuple[int, dict[str, Any], Origin] | None:
        """Take the oldest queued parameters and start a trial with them, atomically, so a
        crash between the two never loses or doubles them. ``complete`` gives the trial's
        whole parameters, origin and note from the queued ones (a partial ``enqueue``: the
        sampler draws the rest), or None for a point that no longer fits the study (a
        narrowed space): that one leaves the queue and the next is taken."""
        with self._tx() as c:
            while True:
                row = c.execute(
                    "SELECT id, params, origin FROM queue ORDER BY id LIMIT 1"
                ).fetchone()
                if row is None:
                    return None
                qid, queued, origin = row
                c.execute("DELETE FROM queue WHERE id=?", (qid,))
                completed = complete(json.loads(queued), Origin(origin))
                if completed is not None:
                    params, how, note = completed
                    number = self._insert_trial(c, json.dumps(params), how.value, note=note)
                    return number, params, how

    def queued(self) -> list[dict[str, Any]]:
        return [json.loads(p) for (p,) in self._read("SELECT params FROM queue")]

    def running_processes(self) -> list[dict[str, Any]]:
        """The process records of the RUNNING trials (see :meth:`set_process`)."""
        rows = self._read(
            "SELECT process FROM trials WHERE state=? AND process IS NOT NULL",
            (TrialState.RUNNING.value,),
        )
        return [json.loads(p) for (p,) in rows]

    def recover_running(
        self, reason: str, interruption: Interruption, found_later: bool = False
    ) -> list[int]:
        """Mark every RUNNING trial FAILED with ``interruption`` and queue its parameters to
        run again: always after a stop (``stopped``), once after a death (``died``: a trial
        that was that retry is not queued again). A paused trial that was running again
        (:meth:`reopen_trial`) becomes PRUNED (paused) again at the step it had paused at:
        the reports it made since are dropped, as its script saved its state (the checkpoint
        it resumes from) when told to pause, not when stopped, so resuming after its later
        reports would train on from an older state under later step numbers. It may be
        resumed later. Each ends now, or with ``found_later`` (a driver opening the study finds
        the trials a dead one left) at its last sign of life: its last report or its driver's
        last heartbeat (:meth:`still_running`), else its start or resume, not whenever the
        study was opened again. Returns the trials' numbers."""
        origin = Origin.RESUMED if interruption is Interruption.STOPPED else Origin.RETRY
        end_sql = '"end"=COALESCE(seen, start, ?)' if found_later else '"end"=?'
        now = _ts(utcnow())
        retry = "; its parameters are retried once"
        with self._tx() as c:
            rows = c.execute(
                "SELECT number, params, origin FROM trials WHERE state=?",
                (TrialState.RUNNING.value,),
            ).fetchall()
            resumed = self._resumed(c)
            self._forget_pausing(c, [n for n, _, _ in rows])
            for n, params, was in rows:
                if n in resumed:  # a paused trial run again: paused again, where it had paused
                    paused_at = resumed[n]
                    dropped = 0
                    if paused_at is not None:
                        dropped = self._drop_after(c, n, paused_at)
                    why = reason.replace(retry, "")
                    if dropped:
                        why += (
                            f"; its {dropped} report(s) after step {paused_at}, where its "
                            "state was saved, were dropped"
                        )
                    last = c.execute(
                        "SELECT value FROM intermediate WHERE trial=? ORDER BY step DESC LIMIT 1",
                        (n,),
                    ).fetchone()
                    c.execute(
                        f"UPDATE trials SET state=?, value=?, {end_sql}, {_APPEND_NOTE} "
                        "WHERE number=?",
                        (
                            TrialState.PRUNED.value,
                            None if last is None else last[0],
                            now,
                            f"paused again: {why}",
                            f"paused again: {why}",
                            n,
                        ),
                    )
                    continue
                again = interruption is Interruption.STOPPED or was != Origin.RETRY.value
                # a retry that dies too is not run again: its note must not promise one
                no_more = reason.replace(retry, "") + "; it was the retry, so no more"
                why = reason if again else no_more
                c.execute(
                    f"UPDATE trials SET state=?, error=?, interrupted=1, interruption=?, {end_sql} "
                    "WHERE number=?",
                    (TrialState.FAILED.value, why, interruption.value, now, n),
                )
                if again:
                    c.execute(
                        "INSERT INTO queue (params, origin) VALUES (?, ?)", (params, origin.value)
                    )
        return [n for n, _, _ in rows]


def _frozen(row: tuple[Any, ...], intermediate: dict[int, float]) -> FrozenTrial:
    n, state, params, value, start, end, error, origin, interruption, note, _, paused_s = row
    return FrozenTrial(
        number=n,
        state=TrialState(state),
        params=json.loads(params),
        value=value,
        start=_dt(start),
        end=_dt(end),
        error=error,
        origin=Origin(origin),
        interruption=None if interruption is None else Interruption(interruption),
        note=note,
        intermediate=intermediate,
        paused_s=paused_s or 0.0,
    )


def _sqlite(target: str, **options: Any) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit, see ``_tx``) that any one
    thread may use: a Study made in one thread may run in another (a notebook's background
    thread, a web app's worker), one thread at a time."""
    return sqlite3.connect(target, isolation_level=None, check_same_thread=False, **options)


def _tmp_of(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def _wal_of(path: Path) -> Path:
    return path.with_name(path.name + "-wal")


def _open_copy(path: Path) -> Path:
    """Where a driver saves its open database when it cannot be written at ``path``."""
    return path.with_name(f"{path.name}.open-copy")


def _identity(path: Path) -> tuple[int, int] | None:
    """Which file ``path`` names now (device, inode); None when there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _uri(path: Path, query: str) -> str:
    """An SQLite URI for ``path``: quoted, so a folder named ``h#1`` or ``w?x`` is that folder;
    from the path's bytes, so a folder name that is not UTF-8 (``lat\\xe9in``) is too."""
    return f"file:{urllib.parse.quote(os.fsencode(path))}?{query}"


def _validate(conn: sqlite3.Connection, path: Path, close: bool = False) -> None:
    """A database with tables must be an intact study database (``quick_check`` reads every
    page, a few milliseconds for ten thousand trials). A file SQLite cannot read for another
    reason (a full disk, no room for its shared-memory file) is not called damaged."""
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        check = conn.execute("PRAGMA quick_check").fetchone()[0] if tables else "ok"
    except sqlite3.DatabaseError as e:
        conn.close()
        text = str(e)
        if "malformed" in text or "not a database" in text:
            raise damaged(path, text) from None
        if isinstance(e, sqlite3.OperationalError) and "unable to open" in text:
            raise  # read-only media: the caller reads it another way
        hint = (
            f" (is the disk full? or was {_wal_of(path).name} deleted or replaced while no "
            "driver ran?)"
            if "disk I/O" in text or "full" in text
            else ""
        )
        raise StorageError(f"{path}: cannot read the study database: {text}{hint}") from None
    if check != "ok" or (tables and not {"meta", "trials"} <= tables):
        conn.close()
        raise damaged(path, check if check != "ok" else f"it holds the tables {sorted(tables)}")
    if close:
        conn.close()


def holds_nothing(path: Path) -> bool:
    """Whether ``path`` is a database with nothing in it: an empty file, or an SQLite file
    without a single table (its log, where everything was, deleted). Anything else (a study,
    a damaged file, one that is not SQLite) is not for this to judge: False."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_HEADER))
        if not head:
            return True
        if head != SQLITE_HEADER:
            return False
        conn = sqlite3.connect(_uri(path, "mode=ro"), uri=True)  # its log's content counts
        try:
            return conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0
        finally:
            conn.close()
    except (OSError, sqlite3.Error):
        return False


def _check_header(path: Path, must_exist: bool) -> None:
    """Refuse a file that is not SQLite at all before SQLite touches it."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        if must_exist:
            inside = sorted(p.parent.name for p in path.parent.glob(f"*/{path.name}"))
            hint = f"; the studies in this folder: {inside}" if inside else ""
            raise FileNotFoundError(f"{path}: no study database here{hint}") from None
        return
    except IsADirectoryError:
        raise damaged(path, "it is a folder") from None
    except OSError as e:
        raise StorageError(f"{path}: cannot read: {e.strerror}") from None
    if head and head != SQLITE_HEADER:
        raise damaged(path, "not an SQLite file")
    if not head and must_exist:  # a study being created this instant, or nothing ever written
        raise FileNotFoundError(f"{path}: holds no study yet (an empty file)")
