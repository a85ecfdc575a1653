"""Keep the HParams table the board's own.

TensorBoard shows one HParams experiment per logdir, and when any run holds an experiment
summary it takes the first it finds: a training script that writes its own (Lightning's
``TensorBoardLogger`` with its default ``hp_metric``, ``SummaryWriter.add_hparams``), or a
study written by torchtune_hp 0.1, would replace the columns of every study in ``logs/`` and
add a second row per trial. So when a trial ends, the HParams summaries in the event files of
its folder that the board did not write are removed, file by file (written anew, then swapped
in); everything else in those files (curves, images, text) is kept. A file that cannot be read
to its end (a damaged record) or that changes meanwhile is left as it is. A TensorBoard already
running keeps what it read until it restarts.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from torchtune_hp.board.tags import OUR_SUFFIX

HPARAMS_PLUGIN = "hparams"
MARK = b"_hparams_"  # in every HParams tag (_hparams_/experiment, ...): a cheap first look
MAX_BYTES = 512 * 2**20  # larger event files are left as they are


def strip_foreign_hparams(folder: Path, recurse: bool = True) -> list[Path]:
    """Remove HParams summaries from the event files under ``folder`` that are not the
    board's; ``recurse=False`` looks at ``folder`` itself only. Returns the files rewritten.
    Links are never followed; unreadable files are left alone."""
    changed: list[Path] = []
    if folder.is_symlink() or not folder.is_dir():
        return changed
    for root, dirs, names in os.walk(folder):  # links below it are listed, never followed
        if not recurse:
            dirs[:] = []
        for name in names:
            if "tfevents" not in name or name.endswith(OUR_SUFFIX):
                continue
            path = Path(root, name)
            try:
                if path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_BYTES:
                    continue
                if MARK not in path.read_bytes():
                    continue
            except OSError:
                continue
            if _rewrite_without_hparams(path):
                changed.append(path)
    return changed


def _rewrite_without_hparams(path: Path) -> bool:
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    tmp = path.with_name(f".strip-{os.getpid()}-{time.monotonic_ns()}")  # no "tfevents"
    removed = consumed = 0
    try:
        before = os.stat(path, follow_symlinks=False)
        with open(tmp, "xb") as out:
            writer = RecordWriter(out)
            for raw in RawEventFileLoader(str(path)).Load():
                consumed += len(raw) + 16  # length, its CRC, the data, its CRC
                event = event_pb2.Event.FromString(raw)
                if event.HasField("summary"):
                    keep = [
                        v
                        for v in event.summary.value
                        if v.metadata.plugin_data.plugin_name != HPARAMS_PLUGIN
                    ]
                    if len(keep) != len(event.summary.value):
                        removed += len(event.summary.value) - len(keep)
                        if not keep:
                            continue
                        del event.summary.value[:]
                        event.summary.value.extend(keep)
                        raw = event.SerializeToString()
                writer.write(raw)
            writer.flush()
        after = os.stat(path, follow_symlinks=False)
        whole = consumed == before.st_size  # a damaged record ends the reading early
        unchanged = (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
        if removed and whole and unchanged:
            os.replace(tmp, path)
            return True
        return False
    except Exception:  # a file TensorBoard itself could not read: left as it is
        return False
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
