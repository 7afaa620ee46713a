"""Whether a process is running: the workers' shared folders name their processes by pid."""

from __future__ import annotations

import os


def alive(pid: int) -> bool:
    """Whether process ``pid`` is running (a pid of another user's process counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
