"""A trial's folder copied from the node that runs it to the driver's ``<study>/trial_NNNN``.

Nodes of a cluster need not share a file system, so a trial runs in a folder of its own on its
node, and the node sends what changed (:class:`FolderSender`) with its answers to the driver,
which writes it into the trial's folder (:func:`apply_chunks`). Files grow by appending (logs,
TensorBoard event files): only the new bytes travel. A file replaced (a new inode), shrunk or
rewritten in place is sent again whole. Links and special files are not copied. Deleted files
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


@dataclass
class _Sent:
    identity: tuple[int, int]  # (device, inode)
    size: int  # bytes sent
    mtime_ns: int


class FolderSender:
    """The node's side: what changed under ``root`` since the last call."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sent: dict[str, _Sent] = {}

    def changes(self, budget: int = BUDGET) -> tuple[list[Chunk], bool]:
        """New bytes, up to ``budget`` of them; True when nothing is left to send."""
        out: list[Chunk] = []
        for folder, dirs, names in os.walk(self.root):
            dirs.sort()
            for name in sorted(names):
                full = os.path.join(folder, name)
                rel = os.path.relpath(full, self.root).replace(os.sep, "/")
                try:
                    st = os.lstat(full)
                    if not stat.S_ISREG(st.st_mode):
                        continue
                    chunk = self._read(full, rel, st, budget)
                except OSError:  # removed or unreadable meanwhile: next time, or never
                    continue
                if chunk is None:
                    continue
                out.append(chunk)
                budget -= len(chunk.data)
                if budget <= 0:
                    return out, False
        return out, True

    def _read(self, full: str, rel: str, st: os.stat_result, budget: int) -> Chunk | None:
        identity = (st.st_dev, st.st_ino)
        prev = self.sent.get(rel)
        same = prev is not None and prev.identity == identity
        if same and prev.size == st.st_size and prev.mtime_ns == st.st_mtime_ns:
            return None
        start = prev.size if same and prev.size < st.st_size else 0
        with open(full, "rb") as f:
            f.seek(start)
            data = f.read(max(0, min(budget, st.st_size - start)))
        done = start + len(data) >= st.st_size
        self.sent[rel] = _Sent(identity, start + len(data), st.st_mtime_ns if done else -1)
        return Chunk(rel, start, data)


class UnsafeChunk(ValueError):
    pass


def apply_chunks(root: Path, chunks: list[Chunk]) -> None:
    """The driver's side: write ``chunks`` under ``root``. A path that leaves ``root``, passes
    through a link, or lands in the board's own runs is refused (:class:`UnsafeChunk`)."""
    for chunk in chunks:
        parts = PurePosixPath(chunk.path).parts
        if not parts or chunk.path.startswith("/") or ".." in parts or parts[0] in OUR_RUNS:
            raise UnsafeChunk(f"a trial file may not be copied to {chunk.path!r}")
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
