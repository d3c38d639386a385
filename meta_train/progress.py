"""Progress output that reads well in a terminal and in a log file.

On a terminal: a tqdm bar. Elsewhere (a pipe, ``make demo > log``, CI): one plain line every
``every`` steps and at the end, instead of a bar redrawn with carriage returns, which piles up
as one endless line in a log.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class LineProgress:
    """tqdm's ``update`` / ``set_postfix`` / ``close`` interface, printing whole lines.

    Args:
      total: steps in the whole run.
      initial: steps already done (a resumed run).
      desc: label at the start of each line.
      unit: name of a step.
      every: print after this many steps (default: about 20 lines per run).
      file: where to write.
    """

    def __init__(self, total: int, initial: int = 0, desc: str = "", unit: str = "it",
                 every: int | None = None, file: TextIO | None = None):
        self.total, self.n, self.desc, self.unit = total, initial, desc, unit
        self.every = max(1, every or -(-max(total - initial, 1) // 20))
        self.file = file or sys.stderr
        self.postfix: dict = {}
        self._start_n, self._t0, self._last = initial, time.time(), initial

    def update(self, n: int = 1) -> None:
        self.n += n
        # the first step too: it includes compilation, so its line shows the run is going
        if (self.n - self._last >= self.every or self.n == self.total
                or self._last == self._start_n):
            self._print()

    def set_postfix(self, **kw) -> None:
        self.postfix = kw

    def close(self) -> None:
        if self.n != self._last:
            self._print()

    def _print(self) -> None:
        self._last = self.n
        elapsed = time.time() - self._t0
        done = self.n - self._start_n
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc} {self.n}/{self.total} {self.unit}"
                 + (f" ({100 * self.n / self.total:.0f}%)" if self.total else "")]
        if rate > 0:
            left = (self.total - self.n) / rate
            parts.append(f"{rate:.3g} {self.unit}/s, {_duration(elapsed)} elapsed, "
                         f"{_duration(left)} left")
        parts += [f"{k} {v}" for k, v in self.postfix.items()]
        print(", ".join(parts), file=self.file, flush=True)


def _duration(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def progress_bar(total: int, *, initial: int = 0, desc: str = "", unit: str = "it",
                 enabled: bool = True, file: TextIO | None = None, every: int | None = None):
    """A tqdm bar when ``file`` (default stderr) is a terminal, :class:`LineProgress`
    otherwise; disabled (silent) when ``enabled`` is false."""
    from tqdm import tqdm
    file = file or sys.stderr
    if not enabled:
        return tqdm(total=total, initial=initial, disable=True)
    if getattr(file, "isatty", lambda: False)():
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True,
                    file=file)
    return LineProgress(total, initial, desc, unit, every=every, file=file)
