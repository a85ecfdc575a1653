"""How a trial running in another process talks to the driver: files in its run folder.

The trial appends one JSON line per report to ``report.jsonl`` (``{"launch", "seq", "step",
"values"}``) and, when it wants the pruner's answer, waits for ``verdict`` (``"<launch> <seq>
prune|continue"``, replaced atomically by the driver). A worker leaves its outcome in
``result.json``; a script that was stopped by a signal it caught (Lightning's trainer catches
SIGTERM and exits 0) leaves ``stopped`` (``"<launch> <signal number>"``). The driver alone
writes SQLite. Files, not sockets: they survive either side dying, they work inside containers
and under DDP re-launches, and the report log doubles as a record of what the script said.

``launch`` is a token the driver makes up for each process it starts: anything in these files
that does not carry it (a file left in the folder by something else) is ignored, so a trial's
result can only come from the process started for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchtune_hp import files
from torchtune_hp.files import open_new
from torchtune_hp.outcome import NotANumber, Outcome, describe

REPORTS = "report.jsonl"
VERDICT = "verdict"
RESULT = "result.json"
STOPPED = "stopped"


# -- the trial's side ----------------------------------------------------------------------------
def append_report(
    run_dir: Path, launch: str, seq: int, step: int | None, values: dict[str, Any]
) -> None:
    sent = time.time()  # the driver gives back the time the trial then waits for it
    line = json.dumps({"launch": launch, "seq": seq, "step": step, "values": values, "t": sent})
    line += "\n"

    def append() -> None:
        with open(run_dir / REPORTS, "a") as f:
            f.write(line)
            f.flush()

    files.made_again_if_deleted(run_dir, append)


def wait_verdict(run_dir: Path, launch: str, seq: int, timeout_s: float = 30.0) -> bool | None:
    """True to prune, False to continue, None when the driver did not answer in time."""
    path = run_dir / VERDICT
    deadline = time.monotonic() + timeout_s
    delay = 0.005
    while time.monotonic() < deadline:
        try:
            token, got, word = path.read_text().split()
            if token == launch and int(got) >= seq:
                return word == "prune"
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    return None


def note_stopped(run_dir: Path, launch: str, signum: int) -> None:
    """The trial is ending early on a stop signal it caught: whatever its exit code says, it
    did not finish (see :func:`read_stopped`)."""
    _replace(run_dir / STOPPED, f"{launch} {int(signum)}")


def write_result(run_dir: Path, launch: str, outcome: Outcome) -> None:
    _replace(run_dir / RESULT, json.dumps({"launch": launch, **outcome.to_json()}))


# -- the driver's side ---------------------------------------------------------------------------
def write_verdict(run_dir: Path, launch: str, seq: int, prune: bool) -> None:
    _replace(run_dir / VERDICT, f"{launch} {seq} {'prune' if prune else 'continue'}")


def _replace(path: Path, text: str) -> None:
    """Write ``path`` whole, atomically: a reader sees the old text or the new, never half;
    writers in several processes at once each write their own temporary file. Unlike
    :func:`~torchtune_hp.files.write_text` a link the trial planted at ``path`` is replaced,
    not refused: the driver's answer must get through whatever the trial did to its folder."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")

    def write() -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # a leftover of a crash (never followed: unlink removes the entry)
        with open_new(tmp) as f:
            f.write(text.encode())
        os.replace(tmp, path)

    files.made_again_if_deleted(path.parent, write)


def read_result(run_dir: Path, launch: str) -> Outcome | None:
    """The worker's outcome, if it left one for this launch."""
    try:
        data = json.loads((run_dir / RESULT).read_text())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("launch") != launch:
        return None
    return Outcome.from_json(data)


def read_stopped(run_dir: Path, launch: str) -> int | None:
    """The stop signal this launch said it caught (:func:`note_stopped`), if any."""
    try:
        token, number = (run_dir / STOPPED).read_text().split()
        return int(number) if token == launch else None
    except (OSError, ValueError):
        return None


# What the driver reads of a trial's file per call, and the longest line it keeps: a longer one
# (a progress bar redrawn with \r, binary output) is skipped, so one endless line cannot make
# the driver read it again and again, or hold it whole (300 MB took 1.1 GB).
READ_LIMIT = 8 << 20
MAX_LINE = 1 << 20


class LineTail:
    """New complete lines of a growing file (a trial's reports, its stdout) since the last
    call; a line still being written waits for the next call, unless it grows past
    :data:`MAX_LINE`: then it is skipped up to its end. Read through ``fd`` when given (a log
    the driver opened: it reads on after the file is deleted), else through the file at
    ``path``, held open once it is there: when it is deleted or another file takes its place
    (its folder was deleted and made again), what is left of it is read first, then the new
    one from its start. The held file, not its inode number, tells them apart: a file system
    may give the new file the number the deleted one had."""

    def __init__(self, path: Path, fd: int | None = None) -> None:
        self.path = path
        self.fd = fd
        self.offset = 0
        self.skipping = False  # inside a line longer than MAX_LINE
        self._held: int | None = None  # the file at path, opened by this reader

    def __del__(self) -> None:
        self._let_go()

    def hold(self) -> None:
        """Open the file at ``path`` now, making it empty where there is none: a file deleted
        before the first read (its folder removed just after the trial's first report) is
        then still read. A link there is not followed (it is read, lazily, as before)."""
        if self.fd is None and self._held is None:
            with contextlib.suppress(OSError):
                self._held = os.open(self.path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644)

    def _let_go(self) -> None:
        if self._held is not None:
            with contextlib.suppress(OSError):
                os.close(self._held)
            self._held = None

    def _read(self) -> bytes:
        if self.fd is not None:
            return os.pread(self.fd, READ_LIMIT, self.offset)
        try:
            if self._held is None:
                self._held = os.open(self.path, os.O_RDONLY)
            data = os.pread(self._held, READ_LIMIT, self.offset)
            if b"\n" in data or not self._gone():
                return data
            self._let_go()  # every line of the old file was read: the new one, from its start
            self.offset, self.skipping = 0, False
            self._held = os.open(self.path, os.O_RDONLY)
            return os.pread(self._held, READ_LIMIT, 0)
        except OSError:  # not there (yet), or the trial put something else in its place
            return b""

    def _gone(self) -> bool:
        """Whether the held file is no longer the one at ``path`` (and there is one there)."""
        assert self._held is not None
        held = os.fstat(self._held)
        try:
            now = os.stat(self.path)
        except OSError:
            return False  # nothing there yet: the old file may still be written through
        return held.st_nlink == 0 or (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino)

    def new_lines(self, final: bool = False) -> list[str]:
        """``final``: the writer has gone, so a last line without its newline (``echo -n``,
        a ``\r`` progress display) is complete too."""
        data = self._read()
        end = data.rfind(b"\n") + 1
        if final and 0 < len(data) < READ_LIMIT:  # the rest of the file, all of it
            end = len(data)
            if self.skipping and b"\n" not in data:  # the end of an overlong line
                self.offset += end
                self.skipping = False
                return []
        if end == 0:  # no line ends here yet
            if self.skipping or len(data) >= MAX_LINE:
                self.offset += len(data)
                self.skipping = True
            return []
        self.offset += end
        if self.skipping:  # the rest of the overlong line
            data = data[data.index(b"\n") + 1 : end]
            self.skipping = False
        else:
            data = data[:end]
        return [
            line for line in data.decode(errors="replace").splitlines() if len(line) <= MAX_LINE
        ]

    def all_new_lines(self, final: bool = False) -> Iterator[str]:
        """:meth:`new_lines` chunk after chunk, until the file holds no further complete line:
        everything so far (the last call after a trial ended must miss nothing, ``final``),
        read in bounded pieces."""
        while True:
            before = self.offset
            yield from self.new_lines(final)
            if self.offset == before:
                return


@dataclass(frozen=True)
class Report:
    seq: int
    step: Any  # as sent: the study decides what a step and a value mean
    value: Any
    sent: float | None = None  # when the trial wrote it (time.time()), if it said


class ReportReader(LineTail):
    """The driver's side of ``report.jsonl``: the reports of the study's metric written by this
    launch since the last call. Lines that are not reports are skipped; ``problems`` says why."""

    def __init__(self, run_dir: Path, launch: str, metric: str) -> None:
        super().__init__(run_dir / REPORTS)
        self.launch = launch
        self.metric = metric
        self.problems: list[str] = []
        self.other_keys: set[str] = set()  # what reports named when not the metric
        self.metric_seen = False

    def new(self) -> list[Report]:
        out = []
        for line in self.all_new_lines():
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except (ValueError, RecursionError):
                self.problems.append(f"a line of {REPORTS} is not JSON: {describe(line)}")
                continue
            if not isinstance(data, dict) or data.get("launch") != self.launch:
                continue  # not written by this trial's process
            values, seq = data.get("values"), data.get("seq")
            if not isinstance(values, dict) or not isinstance(seq, int):
                self.problems.append(f"a line of {REPORTS} is not a report: {describe(line)}")
                continue
            if self.metric not in values:
                self.other_keys.update(map(str, values))
            else:
                self.metric_seen = True
                sent = data.get("t")
                sent = float(sent) if isinstance(sent, (int, float)) else None
                value = values[self.metric]
                if isinstance(value, dict) and isinstance(value.get(NotANumber.MARK), str):
                    value = NotANumber(value[NotANumber.MARK])  # the reason, said where it was
                out.append(Report(seq, data.get("step"), value, sent))
        return out
