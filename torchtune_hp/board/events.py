"""One TensorBoard event file: scalars, PNG images and raw summaries (the HParams protos).

Scalars are ``simple_value`` (float32, about 7 digits; TensorBoard's table shows 5): a float64
tensor would keep every digit, but TensorBoard's fast data server (its default) does not read
float64 scalars, so the HParams table would show no value at all.

Written with TensorBoard's own record format (``RecordWriter``), with no TensorFlow and no
``SummaryWriter`` (whose ``add_hparams`` makes a timestamped sub-run per call). Writes are
synchronous and flushed: a dashboard that is open shows a trial's values as they arrive, and a
write that fails (a full disk) raises here, in the driver's thread, where the study stops
cleanly, instead of in a background thread that prints a traceback and loses the event. The
file is created new, never through a link.

Pictures are the exception to appending: each redraw is written to a new file in its own run
and the files it replaced are deleted (:func:`write_replacing`), so a study that redraws every
few seconds all night keeps one set of pictures on disk, not one per redraw.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import struct
import time
from pathlib import Path

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

from torchtune_hp import files
from torchtune_hp.board.tags import OUR_SUFFIX
from torchtune_hp.files import open_new

_COUNTER = itertools.count()


class EventWriter:
    """Appends events to a new event file in ``logdir`` (created if missing)."""

    def __init__(self, logdir: Path) -> None:
        logdir.mkdir(parents=True, exist_ok=True)
        self.logdir = logdir
        # the counter padded, so names sort in the order they were made (TensorBoard reads a
        # run's files in name order)
        count = next(_COUNTER)
        stamp = f"{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{count:06d}"
        name = f"events.out.tfevents.{stamp}{OUR_SUFFIX}"  # TensorBoard's naming, marked ours
        self.path = logdir / name
        file = open_new(self.path)
        try:
            self._writer = RecordWriter(file)
            self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))
        except BaseException:  # a full disk: no empty file left behind
            with contextlib.suppress(OSError):
                file.close()
            self.path.unlink(missing_ok=True)
            raise

    def _write(self, event: event_pb2.Event) -> None:
        self._writer.write(event.SerializeToString())
        self._writer.flush()

    def summary(self, summary: summary_pb2.Summary, step: int = 0) -> None:
        self._write(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.summary(
            summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)]),
            step,
        )

    def image(self, tag: str, png: bytes, step: int) -> None:
        width, height = png_size(png)
        img = summary_pb2.Summary.Image(
            height=height, width=width, colorspace=4, encoded_image_string=png
        )
        self.summary(
            summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, image=img)]), step
        )

    def close(self) -> None:
        if not self._writer.closed:
            self._writer.close()


# a replaced pictures file stays this long after the file that replaced it was written: the
# classic TensorBoard loader (--load_fast=false) reads a run's files one after the other and,
# were the file it is reading deleted before it saw the next one, would read nothing more from
# that run; it rereads the logdir every 5 s by default, so five minutes leave room for a slow
# reload of a big logdir. The fast data server (the default) minds neither way.
REPLACED_GRACE_S = 300.0


def write_replacing(folder: Path, images: dict[str, bytes], step: int) -> None:
    """``images`` (tag -> PNG) at ``step``, in a new event file in ``folder`` that replaces the
    ones there: those whose successor was written :data:`REPLACED_GRACE_S` before the new
    file are deleted (ages on the file system's clock alone: a network logdir's server may
    keep another time than this host). A TensorBoard that is open keeps the steps it has read
    (up to 10 per tag); one started later shows the latest. A write that fails (a full disk)
    leaves no partial file and still deletes what is due. Only our own regular files are
    touched; a link at ``folder`` is refused."""
    if folder.is_symlink():
        raise files.unsafe(folder)
    try:
        writer = EventWriter(folder)  # removes its own file if even the header fails
        try:
            for tag, png in images.items():
                writer.image(tag, png, step)
            writer.close()
        except BaseException:
            with contextlib.suppress(OSError):
                writer.close()
            writer.path.unlink(missing_ok=True)
            raise
    except BaseException:
        with contextlib.suppress(OSError):  # the write's own error is the one to tell
            _delete_replaced(folder, None)
        raise
    _delete_replaced(folder, writer.path)


def _delete_replaced(folder: Path, newest: Path | None) -> None:
    """Delete our files in ``folder`` whose successor is older than the grace, ``newest``
    (the file just written, the clock's reference) never; without it, by this host's clock."""
    ours = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.endswith(OUR_SUFFIX) and entry.is_file(follow_symlinks=False):
                ours.append((entry.stat(follow_symlinks=False).st_mtime_ns, entry.name))
    ours.sort()
    now_ns = newest.stat().st_mtime_ns if newest is not None else time.time_ns()
    keep = newest.name if newest is not None else None
    for (_, name), (successor_ns, _) in zip(ours, ours[1:], strict=False):
        if now_ns - successor_ns >= REPLACED_GRACE_S * 1e9 and name != keep:
            (folder / name).unlink(missing_ok=True)


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG image")
    width, height = struct.unpack(">II", png[16:24])
    return int(width), int(height)
