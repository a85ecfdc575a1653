"""The study folder on disk: safe names, writes that never follow a planted link, the driver's lock.

Everything torchtune_hp writes lives in ``<logdir>/<study>/``. The folder name is one safe path
component, so no name can point outside the logdir. Files and trial folders inside it are
created without following symbolic links: a link planted there (``recipe.yaml -> ~/.bashrc``)
makes the write fail instead of landing elsewhere. The logdir, and the study folder itself, may
be links the user made (``logs -> /scratch/logs``): those are the user's choice.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from torchtune_hp.errors import StorageError, StudyLocked, UnsafePath

NAME_MAX = 100
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
DATABASE = "study.db"
MAX_DATABASE_PATH = 504  # bytes: SQLite's unix limit of 512 for a path, less "-journal"


def check_study_name(name: object) -> str:
    """A study name is one folder name: ASCII letters, digits, ``_ . -``, not starting with a dot,
    at most 100 characters (``..``, ``.`` and ``a/b`` would write outside the logdir)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a study name must be a non-empty string, got {name!r}")
    if len(name) > NAME_MAX:
        raise ValueError(f"a study name has at most {NAME_MAX} characters, got {len(name)}")
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"a study name is one folder name of ASCII letters, digits, '_', '.' and '-', not "
            f"starting with '.' or '-', got {name!r}"
        )
    return name


def absolute(path: str | Path) -> Path:
    """``path`` made absolute against the current folder, links left as they are (a venv's
    ``bin/python`` must stay the venv's, not become the base interpreter it links to)."""
    return Path(os.path.abspath(os.fspath(path)))


def timestamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")


def write_text(path: Path, text: str) -> None:
    """Write a file of ours whole: into a new file beside it, then renamed over it. Neither a
    symbolic link standing at ``path`` (refused) nor a hard link (replaced, never written
    into) can carry the write to another file."""
    if os.path.islink(path):
        raise unsafe(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    try:
        with open_new(tmp) as f:
            f.write(text.encode())
        os.replace(tmp, path)
    except BaseException:  # a full disk, a stop signal: no half-written file stays behind
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def open_new(path: Path, readable: bool = False):  # type: ignore[no-untyped-def]
    """A new binary file of ours, opened for writing (and reading, with ``readable``): it must
    not exist yet, so nothing that stands at ``path`` (a link of either kind, somebody else's
    file) is ever written into."""
    mode = os.O_RDWR if readable else os.O_WRONLY
    try:
        fd = os.open(path, mode | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EEXIST) and os.path.islink(path):
            raise unsafe(path) from None
        raise
    return os.fdopen(fd, "w+b" if readable else "wb")


def unsafe(path: Path) -> UnsafePath:
    return UnsafePath(
        f"{path}: is a symbolic link; torchtune_hp never writes through a link inside a study "
        "folder"
    )


def set_aside(path: Path) -> None:
    """Rename whatever stands at ``path`` (never read or followed) to ``<name>.stale-<time>``."""
    if os.path.lexists(path):
        os.rename(path, path.with_name(f"{path.name}.stale-{timestamp()}-{time.monotonic_ns()}"))


def fresh_dir(path: Path) -> Path:
    """A new, empty folder of ours at ``path``. Whatever stands there already (a trial folder of
    an earlier study of the same name, a planted link) is renamed aside, never read or
    followed: a trial's output can then only come from its own process."""
    set_aside(path)
    path.mkdir()
    return path


def discard_dir(path: Path, suffix: str) -> None:
    """Remove a folder of ours: a real folder holding only files whose names end in ``suffix``
    (what we write) is deleted; anything else there (a link, a file, a folder a script made) is
    renamed aside, never followed or deleted."""
    if path.is_dir() and not path.is_symlink():
        with os.scandir(path) as entries:
            ours = all(
                e.name.endswith(suffix) and e.is_file(follow_symlinks=False) for e in entries
            )
        if ours:
            shutil.rmtree(path)
            return
    set_aside(path)


def renewed_dir(path: Path, suffix: str) -> Path:
    """A new, empty folder at ``path`` in place of one of ours (see :func:`discard_dir`)."""
    discard_dir(path, suffix)
    path.mkdir()
    return path


def check_study_dir(path: Path) -> None:
    """StorageError where the study folder ``path`` could not be created or written, judged
    without creating anything (``validate`` asks before a night's run): a file where the
    logdir or one of its parents should be, a folder nobody may write in, a path too long for
    SQLite (it said only "unable to open database file", after the folder was made)."""
    length = len(os.fsencode(os.path.abspath(path / DATABASE)))
    if length > MAX_DATABASE_PATH:
        raise StorageError(
            f"{path}: too long a path for SQLite: the study's database would be {length} bytes "
            f"from /, and SQLite opens at most {MAX_DATABASE_PATH} (its 512 less the "
            "'-journal' it adds); use a shorter logdir or study name"
        )
    if path.exists():
        if not path.is_dir():
            raise StorageError(f"{path}: exists and is not a folder")
        if not os.access(path, os.W_OK):
            raise StorageError(f"{path}: not writable (a read-only folder or file system)")
        return
    above = path.parent
    while not above.exists() and above != above.parent:
        above = above.parent
    if not above.is_dir():
        what = "the logdir" if above == path.parent else "a folder above the logdir"
        raise StorageError(f"{above}: {what} is a file, not a folder")
    if not os.access(above, os.W_OK | os.X_OK):
        raise StorageError(f"{path}: cannot create the study folder: {above} is not writable")


def make_study_dir(path: Path) -> None:
    """Create the study folder, with a clear message when the logdir cannot hold it."""
    check_study_dir(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise StorageError(f"{path}: exists and is not a folder") from None
    except OSError as e:
        where = e.filename or path
        raise StorageError(f"{where}: cannot create the study folder: {e.strerror}") from None
    check_study_dir(path)  # created: now writable?


def set_aside_leftovers(path: Path) -> Path | None:
    """A new study (no database yet) in a folder that holds another study's files (its
    ``study.db`` was deleted, its trial folders kept): move those files, every byte, into
    ``<study>.replaced-<time>/`` beside it, so nothing of theirs is read as the new study's
    (a write-ahead log left by the old database would even be replayed into the new one)."""
    leftovers = list(path.iterdir())
    if not leftovers:
        return None
    aside = path.with_name(f"{path.name}.replaced-{timestamp()}")
    aside.mkdir()
    for p in leftovers:
        os.rename(p, aside / p.name)
    return aside


# folder (real path) -> the lock this process holds on it (see StudyLock.acquire); a forked
# child holds none of them (the kernel's flock stays the parent's, its owner too)
_HELD: dict[str, StudyLock] = {}
os.register_at_fork(after_in_child=_HELD.clear)


class StudyLock:
    """One driver per study: an exclusive ``flock`` on the study folder itself.

    The kernel holds the lock on the open folder for as long as the driver lives and drops it
    the moment the driver dies, kill -9 included; no lock file exists that could be deleted,
    touched or left behind. Deleting ``study.db`` or any other file does not release it. (A lease
    row in the database would need a timeout before a dead driver's study could be resumed.)
    The descriptor is not inherited by trial processes, so a trial that outlives the driver
    cannot hold the study either."""

    def __init__(self, folder: Path, on_handover: Callable[[], None] | None = None) -> None:
        self.folder = folder
        self._fd: int | None = None
        # what this process does when it opens the folder again while this lock is held: the
        # owner's close (a notebook cell run again: ``study = Study(...)`` builds the new study
        # while the old one still holds the folder); None: the second open is refused
        self.on_handover = on_handover
        self.busy = False  # the owner's trial loop is running: never handed over
        self._key = ""  # the real path it was taken under

    def acquire(self, wait_s: float = 1.0) -> StudyLock:
        """Take the lock; a DDP follower probing it at the same moment is waited for briefly.
        Where this process already holds the folder through an idle owner that can hand it
        over, that owner is closed first (the one driver is still this process)."""
        key = os.path.realpath(self.folder)
        held = _HELD.get(key)
        if held is not None and held is not self and held._fd is not None:
            if held.busy or held.on_handover is None:
                raise StudyLocked(
                    f"{self.folder}: this process is running the study already (another Study "
                    "object's trial loop, or a command); use that object, or close() it first"
                )
            try:
                held.on_handover()
            except Exception:  # e.g. its database belongs to another thread: free it anyway
                pass
            finally:
                held.release()  # the owner may be gone already (freed without close())
        fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise run_elsewhere(self.folder) from None
                time.sleep(0.05)
        self._fd = fd
        self._key = key
        _HELD[key] = self
        return self

    def follow_folder(self) -> None:
        """The study folder was deleted and made again while the lock was held (its database
        written again, see :mod:`~torchtune_hp.storage`): take the lock on the new folder, so
        a second driver cannot get into it, and let go of the deleted one."""
        if self._fd is None:
            return
        now = os.stat(self.folder)
        held = os.fstat(self._fd)
        if (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
            return
        fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StudyLocked(
                f"{self.folder}: the study folder was deleted while the study ran and another "
                "process has taken the new one"
            ) from None
        os.close(self._fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor releases the flock
            self._fd = None
            if _HELD.get(self._key) is self:
                del _HELD[self._key]

    @staticmethod
    def is_held(folder: Path) -> bool:
        """Whether a live driver holds the study now (a probe that takes nothing for long)."""
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)


def run_elsewhere(folder: Path) -> StudyLocked:
    """The error of a run (or of ``validate``, which says what a run would do) refused
    because another live process drives the study in ``folder``."""
    return StudyLocked(
        f"{folder}: the study is being run by another process{driver_description(folder)}; "
        "wait for it to end or stop it"
    )


def driver_description(folder: Path) -> str:
    """`` (pid N on host H, since T)`` from the study's metadata, or nothing when unreadable."""
    from torchtune_hp.storage import Storage

    try:
        storage = Storage(folder / DATABASE, read_only=True)
        try:
            driver = storage.get_meta().get("driver") or {}
        finally:
            storage.close()
    except Exception:  # only decorates the message: any failure just leaves it out
        return ""
    if not driver:
        return ""
    return f" (pid {driver.get('pid')} on host {driver.get('host')}, since {driver.get('since')})"


def made_again_if_deleted(run_dir: Path, write: Callable[[], None]) -> None:
    """``write()``, and once more after making ``run_dir`` again where it was deleted (a
    cleanup script, ``rm -r`` of the study while it runs): a trial's or the driver's next
    write makes its folder again and the study goes on (the driver reads a trial's logs
    through the files it holds)."""
    try:
        write()
        return
    except FileNotFoundError:
        if run_dir.is_dir():
            raise
    run_dir.mkdir(parents=True, exist_ok=True)
    write()
