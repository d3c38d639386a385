"""TensorBoard scalars through tensorboard's own event writer (no TensorFlow needed)."""

from __future__ import annotations

import os
import time

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter


class TBWriter:
    """Writes scalar summaries to ``logdir``; readable by TensorBoard and its
    ``EventAccumulator``."""

    def __init__(self, logdir: str | os.PathLike):
        os.makedirs(logdir, exist_ok=True)
        self._w = EventFileWriter(str(logdir))

    def scalars(self, step: int, values: dict) -> None:
        vals = [summary_pb2.Summary.Value(tag=k, simple_value=float(v))
                for k, v in values.items() if isinstance(v, (int, float))]
        self._w.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                          summary=summary_pb2.Summary(value=vals)))

    def close(self) -> None:
        self._w.flush()
        self._w.close()
