"""Progress of a stage: a live bar in a terminal, whole lines in a log file.

tqdm redraws its bar with carriage returns; in a log file (SLURM's, `> run.log`) those make one enormous line.
When stderr is not a terminal, `progress` writes a line instead, at most every `every_s` seconds and at the
end: `sft: 120/300 steps (40%), 12.3 steps/s, loss=0.4512`.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from tqdm.auto import tqdm


class LineProgress:
    """The part of tqdm's interface the stages use, written as plain lines."""

    def __init__(self, total: int, initial: int, desc: str, unit: str, every_s: float, file):
        self.total, self.n, self.desc, self.unit, self.every_s, self.file = (
            total,
            initial,
            desc,
            unit,
            every_s,
            file,
        )
        self._first, self._start = initial, time.perf_counter()
        self._last = self._start
        self._postfix: dict[str, Any] = {}

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self._last >= self.every_s or self.n >= self.total:
            self._last = now
            self._write(now)

    def set_postfix(self, refresh: bool = False, **values: Any) -> None:
        self._postfix = values

    def _write(self, now: float) -> None:
        rate = (self.n - self._first) / max(now - self._start, 1e-9)
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        extra = "".join(f", {k}={v}" for k, v in self._postfix.items())
        print(f"{self.desc}: {self.n}/{self.total} {self.unit}s{share}, {rate:.3g} {self.unit}s/s{extra}",
              file=self.file, flush=True)  # fmt: skip

    def close(self) -> None:
        pass


def progress(total: int, initial: int = 0, *, desc: str, unit: str = "step", every_s: float = 30.0):
    """A progress reporter with `update(n)`, `set_postfix(**values)` and `close()`."""
    if sys.stderr.isatty() or "ipykernel" in sys.modules:  # a terminal or a notebook: a live bar
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, mininterval=1.0)
    return LineProgress(total, initial, desc, unit, every_s, sys.stderr)
