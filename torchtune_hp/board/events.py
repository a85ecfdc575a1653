"""One TensorBoard event file: scalars, PNG images and raw summaries (the HParams protos).

Built on TensorBoard's own ``EventFileWriter``, with no TensorFlow and no ``SummaryWriter``
(whose ``add_hparams`` makes a timestamped sub-run per call). Every write is flushed, so a
dashboard that is open shows a trial's values as they arrive.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter


class EventWriter:
    """Appends events to a new event file in ``logdir`` (created if missing)."""

    def __init__(self, logdir: Path) -> None:
        logdir.mkdir(parents=True, exist_ok=True)
        self.logdir = logdir
        self._writer = EventFileWriter(str(logdir), flush_secs=5)

    def summary(self, summary: summary_pb2.Summary, step: int = 0) -> None:
        self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))
        self._writer.flush()

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
        self._writer.close()


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG image")
    width, height = struct.unpack(">II", png[16:24])
    return int(width), int(height)
