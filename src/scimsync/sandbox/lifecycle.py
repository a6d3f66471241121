"""The with-block shape shared by every throwaway server: start on entry, stop on exit."""

from __future__ import annotations

import os
import signal
import subprocess
from types import TracebackType
from typing import Self


def terminate(process: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM, wait; SIGKILL if it will not go. Waiting frees the port for the next start."""
    if process is None:
        return
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout)


class Lifecycle:
    """Subclasses give `start() -> Self` and `stop()`."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
