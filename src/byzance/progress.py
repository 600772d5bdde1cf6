"""Progress bars (tqdm, a requirement): rounds of one run, runs of a grid."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from tqdm.auto import tqdm


class RoundProgress:
    """A bar over the rounds of one run, showing the last evaluation's accuracy and loss."""

    def __init__(self, total: int, enabled: bool = True, **extra: Any) -> None:
        self.done = 0
        self.bar = tqdm(total=total, unit="round", disable=not enabled, **extra)

    def update(self, round_: int, record: dict[str, Any]) -> None:
        self.bar.update(round_ - self.done)
        shown = {"acc": f"{record['test_accuracy']:.3f}", "loss": f"{record['train_loss']:.3f}"}
        if record.get("missing_workers"):
            shown["missing"] = str(len(record["missing_workers"]))
        if "spread" in record:
            shown["spread"] = f"{record['spread']:.3g}"
        self.bar.set_postfix(shown)
        self.done = round_

    def close(self) -> None:
        self.bar.close()


class RunsProgress:
    """A one-line bar on ``stream``: runs done/total, ETA, best/worst final accuracy."""

    def __init__(
        self,
        total: int,
        done: int = 0,
        stream: TextIO | None = None,
        width: int = 24,
        enabled: bool = True,
    ) -> None:
        self.total, self.done, self.width, self.enabled = total, done, width, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.resumed = done
        self.failed = 0
        self.best: float | None = None
        self.worst: float | None = None
        self.start = time.perf_counter()
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def add_accuracy(self, acc: float | None) -> None:
        if acc is None:
            return
        self.best = acc if self.best is None else max(self.best, acc)
        self.worst = acc if self.worst is None else min(self.worst, acc)

    def update(self, status: str, acc: float | None) -> None:
        self.done += 1
        self.failed += status != "finished"
        self.add_accuracy(acc)
        self.render()

    def line(self) -> str:
        frac = self.done / self.total if self.total else 1.0
        filled = int(round(frac * self.width))
        bar = "#" * filled + "-" * (self.width - filled)
        ran = self.done - self.resumed
        remaining = self.total - self.done
        if ran and remaining:
            eta = duration((time.perf_counter() - self.start) / ran * remaining)
        else:
            eta = "--" if remaining else "0s"
        parts = [f"[{bar}] {self.done}/{self.total} runs", f"ETA {eta}"]
        if self.best is not None:
            parts.append(f"best {self.best:.3f}  worst {self.worst:.3f}")
        if self.failed:
            parts.append(f"failed {self.failed}")
        return "  ".join(parts)

    def render(self) -> None:
        if not self.enabled:
            return
        if self._tty:
            self.stream.write("\r" + self.line() + "\x1b[K")
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self._tty:
            self.stream.write("\n")
            self.stream.flush()


def duration(seconds: float) -> str:
    """``42s``, ``3m07s``, ``2h05m``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
