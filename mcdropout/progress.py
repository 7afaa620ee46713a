"""Progress for long work: a tqdm bar on a terminal, plain lines (every 10%) otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm


class Progress:
    def __init__(self, total: int, description: str, unit: str = "it", *, quiet: bool = False,
                 stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.total = max(total, 1)
        self.description = description
        self.unit = unit
        self.done = 0
        self.quiet = quiet
        self.interactive = not quiet and self.stream.isatty()
        self.bar = tqdm(total=total, desc=description, unit=unit, file=self.stream, disable=not self.interactive,
                        dynamic_ncols=True)
        self.next_report = 0.1
        self.started = time.perf_counter()

    def update(self, count: int = 1, **status: float | str) -> None:
        self.done += count
        if self.interactive:
            self.bar.update(count)
            if status:
                self.bar.set_postfix(status, refresh=False)
            return
        if self.quiet:
            return
        if self.done / self.total >= self.next_report or self.done >= self.total:
            elapsed = time.perf_counter() - self.started
            details = "".join(f" {key}={_format(value)}" for key, value in status.items())
            rate = self.done / elapsed if elapsed > 0 else 0.0
            print(f"{self.description}: {self.done}/{self.total} {self.unit} ({100 * self.done / self.total:.0f}%,"
                  f" {rate:.1f} {self.unit}/s){details}", file=self.stream, flush=True)
            while self.next_report <= self.done / self.total:
                self.next_report += 0.1

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _format(value: float | str) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
