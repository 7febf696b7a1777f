"""Progress reporting: a live one-line bar on a terminal or in a notebook, log lines otherwise."""

from __future__ import annotations

import sys
import time

__all__ = ["Progress"]


def _fmt_time(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _is_notebook(stream) -> bool:
    """True for a Jupyter/Colab cell's output stream (ipykernel), which redraws on '\r'."""
    return type(stream).__module__.split(".")[0] == "ipykernel"


class Progress:
    """Reports steps, loss, PSNR, it/s and ETA.

    On a TTY, and in a Jupyter or Colab cell, the line is redrawn in place as a bar;
    elsewhere (CI, logs) a line is printed at most every `log_seconds` seconds and at the end.
    """

    def __init__(self, total: int, start: int = 0, stream=None, log_seconds: float = 10.0,
                 enabled: bool = True):
        self.total, self.start = total, start
        self.stream = stream or sys.stdout
        self.notebook = _is_notebook(self.stream)
        self.tty = self.notebook or bool(getattr(self.stream, "isatty", lambda: False)())
        self.log_seconds = log_seconds
        self.enabled = enabled
        self.t0 = time.perf_counter()
        self.last_print = -1e9

    def update(self, step: int, loss: float, psnr: float, extra: str = "") -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        rate = (step - self.start) / max(now - self.t0, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        done = step >= self.total
        line = (f"step {step}/{self.total} loss {loss:.5f} psnr {psnr:.2f} dB "
                f"{rate:.1f} it/s ETA {_fmt_time(eta) if eta != float('inf') else '?'}"
                + (f" {extra}" if extra else ""))
        if self.tty:
            width = 24
            filled = int(width * step / max(self.total, 1))
            bar = "#" * filled + "-" * (width - filled)
            # A notebook has no erase-line escape: pad over the previous line instead.
            clear = " " * 8 if self.notebook else "\033[K"
            self.stream.write(f"\r[{bar}] {line}{clear}" + ("\n" if done else ""))
            self.stream.flush()
        elif done or now - self.last_print >= self.log_seconds:
            self.stream.write(line + "\n")
            self.stream.flush()
            self.last_print = now

    def message(self, text: str) -> None:
        if self.enabled:
            self.stream.write(("\n" if self.tty else "") + text + "\n")
            self.stream.flush()
