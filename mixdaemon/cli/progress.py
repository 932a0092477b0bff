"""Progress bars: the only place the package draws one. Every API takes the package's one callback
shape, `progress(stage, fraction)` (mixdaemon/progress.py); a ProgressBar is such a callback."""
from __future__ import annotations

import logging
import sys


class ProgressBar:
    """A tqdm bar over 0–100 % whose label follows the job's stage (quiet when disabled)."""

    def __init__(self, enabled: bool = True):
        from tqdm import tqdm
        self._bar = tqdm(total=100, unit="%", disable=not enabled, file=sys.stderr,
                         bar_format="{desc:<24} {percentage:3.0f}%|{bar}| {elapsed}<{remaining}")

    def __call__(self, stage: str, fraction: float) -> None:
        self._bar.set_description_str(stage[:24])
        self._bar.update(max(0.0, 100.0 * fraction - self._bar.n))

    def close(self) -> None:
        self._bar.close()

    def log_handler(self) -> logging.Handler:
        """A logging handler that writes each record above the bar instead of through it."""
        bar = self._bar

        class AboveTheBar(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                bar.write(self.format(record), file=sys.stderr)
        return AboveTheBar()

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
