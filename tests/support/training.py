"""What the training tests share: loop settings for runs of a few updates."""
from pathlib import Path

from mixdaemon.train.loop import LoopSettings


def quick_loop(run_dir: Path, **overrides) -> LoopSettings:
    """Validate every 2 updates, checkpoint every update, no data-loader workers, no progress bar."""
    return LoopSettings(**{"run_dir": run_dir, "validate_every": 2, "checkpoint_every": 1, "workers": 0, **overrides})
