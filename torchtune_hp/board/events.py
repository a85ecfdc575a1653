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
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
import time
from pathlib import Path

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

from torchtune_hp.board.tags import OUR_SUFFIX
from torchtune_hp.files import open_new

_COUNTER = itertools.count()


class EventWriter:
    """Appends events to a new event file in ``logdir`` (created if missing)."""

    def __init__(self, logdir: Path) -> None:
        logdir.mkdir(parents=True, exist_ok=True)
        self.logdir = logdir
        stamp = f"{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(_COUNTER)}"
        name = f"events.out.tfevents.{stamp}{OUR_SUFFIX}"  # TensorBoard's naming, marked ours
        self._writer = RecordWriter(open_new(logdir / name))
        self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

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


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG image")
    width, height = struct.unpack(">II", png[16:24])
    return int(width), int(height)
