"""The `aim` command line: serve, keys, usage, calibrate, eval (and the plots and progress bars
those commands draw)."""

from .main import main

__all__ = ["main"]
