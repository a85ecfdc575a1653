"""A trial's folder copied from the node that runs it to the driver's ``<study>/trial_NNNN``.

Nodes of a cluster need not share a file system, so a trial runs in a folder of its own on its
node, and the node sends what changed (:class:`FolderSender`) with its answers to the driver,
which writes it into the trial's folder (:func:`apply_chunks`). Files grow by appending (logs,
TensorBoard event files): only the new bytes travel. A file replaced (a new inode), shrunk or
rewritten in place (its first or last bytes sent changed: ``json.dump`` over the old file) is
sent again whole. Links and special files are not copied. Deleted files
stay on the driver: what a trial wrote once is kept.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from torchtune_hp.board.tags import OUR_RUNS

BUDGET = 8 << 20  # bytes per message: a large checkpoint travels over several


@dataclass(frozen=True)
class Chunk:
    path: str  # relative to the trial's folder, "/"-separated
    offset: int  # where ``data`` goes; 0 starts the file over
    data: bytes


EDGE = 64  # bytes at each end of what was sent, to tell an append from a rewrite


@dataclass
class _Sent:
    identity: tuple[int, int]  # (device, inode)
    size: int  # bytes sent
    mtime_ns: int  # of the file when all of it was sent (-1: part of it)
    head: bytes  # the first and last EDGE bytes sent
    tail: bytes


class FolderSender:
    """The node's side: what changed under ``root`` since the last call. Small changes go
    first, so a large file being written (a checkpoint) never holds back the logs and the
    TensorBoard event files behind it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sent: dict[str, _Sent] = {}

    def changes(self, budget: int = BUDGET) -> tuple[list[Chunk], bool]:
        """New bytes, up to ``budget`` of them; True when nothing is left to send."""
        pending = []
        for folder, dirs, names in os.walk(self.root):
            dirs.sort()
            for name in sorted(names):
                full = os.path.join(folder, name)
                rel = os.path.relpath(full, self.root).replace(os.sep, "/")
                try:
                    st = os.lstat(full)
                    start = self._start(full, rel, st) if stat.S_ISREG(st.st_mode) else None
                except OSError:  # removed or unreadable meanwhile: next time, or never
                    continue
                if start is not None:
                    pending.append((st.st_size - start, rel, full, start))
        out: list[Chunk] = []
        for _, rel, full, start in sorted(pending):
            try:
                chunk = self._read(full, rel, start, budget)
            except OSError:
                continue
            out.append(chunk)
            budget -= len(chunk.data)
            if budget <= 0:
                return out, False
        return out, True

    def _start(self, full: str, rel: str, st: os.stat_result) -> int | None:
        """Where to send ``full`` from: None when unchanged, the size sent when it only grew
        (its first and last bytes sent are still there), else 0: it is sent again whole."""
        prev = self.sent.get(rel)
        if prev is None or prev.identity != (st.st_dev, st.st_ino) or prev.size > st.st_size:
            return 0
        if prev.size == st.st_size and prev.mtime_ns == st.st_mtime_ns:
            return None
        if prev.size < st.st_size and self._kept(full, prev):
            return prev.size  # the rest of a file sent in parts, or an append
        return 0  # rewritten in place

    @staticmethod
    def _kept(full: str, prev: _Sent) -> bool:
        with open(full, "rb") as f:
            head = f.read(len(prev.head))
            f.seek(prev.size - len(prev.tail))
            return head == prev.head and f.read(len(prev.tail)) == prev.tail

    def _read(self, full: str, rel: str, start: int, budget: int) -> Chunk:
        with open(full, "rb") as f:
            st = os.fstat(f.fileno())
            f.seek(start)
            data = f.read(max(0, min(budget, st.st_size - start)))
            end = start + len(data)
            f.seek(0)
            head = f.read(min(EDGE, end))
            f.seek(max(0, end - EDGE))
            tail = f.read(min(EDGE, end))
        done = end >= st.st_size
        identity = (st.st_dev, st.st_ino)
        self.sent[rel] = _Sent(identity, end, st.st_mtime_ns if done else -1, head, tail)
        return Chunk(rel, start, data)


class UnsafeChunk(ValueError):
    pass


def apply_chunks(root: Path, chunks: list[Chunk]) -> list[str]:
    """The driver's side: write ``chunks`` under ``root``; returns why each one that was not
    written was not, one line each. A path that leaves ``root``, passes through a link, or
    lands in the board's own runs (a trial's ``hparams/config.json``) is refused; the chunks
    beside it are written all the same, so a trial's result and reports never stay behind
    one file that may not be copied (they did: a trial was recorded at its last report)."""
    problems = []
    for chunk in chunks:
        try:
            _write(root, chunk)
        except (OSError, UnsafeChunk) as e:
            problems.append(str(e))
    return problems


def _write(root: Path, chunk: Chunk) -> None:
    parts = PurePosixPath(chunk.path).parts
    if not parts or chunk.path.startswith("/") or ".." in parts or parts[0] in OUR_RUNS:
        ours = parts and parts[0] in OUR_RUNS
        why = f" ({parts[0]}/ holds the trial's TensorBoard rows)" if ours else ""
        raise UnsafeChunk(f"a trial file may not be copied to {chunk.path!r}{why}")
    folder = root
    for part in parts[:-1]:
        folder = folder / part
        try:
            os.mkdir(folder)
        except FileExistsError:
            if folder.is_symlink() or not folder.is_dir():
                raise UnsafeChunk(f"{folder} is not a plain folder") from None
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    if chunk.offset == 0:
        flags |= os.O_TRUNC
    fd = os.open(folder / parts[-1], flags, 0o644)
    try:
        os.pwrite(fd, chunk.data, chunk.offset)
    finally:
        os.close(fd)
