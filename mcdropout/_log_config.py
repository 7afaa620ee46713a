"""The logging set-up of ``mcdropout serve``: uvicorn's and the service's loggers, as text or JSON lines.

Handed to ``uvicorn.run(log_config=...)``, which applies it in the server process; the library itself
never configures logging.
"""

from __future__ import annotations

import copy
from typing import Any

LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
FORMATS = ("text", "json")
_JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s"


def log_config(level: str, fmt: str) -> dict[str, Any]:
    """A logging.config dictionary: uvicorn's own, plus the ``mcdropout`` loggers, in ``fmt`` at ``level``."""
    if level not in LEVELS:
        raise ValueError(f"log level {level!r} is not one of {', '.join(LEVELS)}")
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {', '.join(FORMATS)}")
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    if fmt == "json":
        # One JSON object a line (python-json-logger); fields given with `extra=` are added as keys.
        from pythonjsonlogger.core import RESERVED_ATTRS

        json_formatter = {"()": "pythonjsonlogger.json.JsonFormatter", "fmt": _JSON_FIELDS,
                          "rename_fields": {"levelname": "level", "name": "logger", "asctime": "time"},
                          "reserved_attrs": [*RESERVED_ATTRS, "color_message"]}  # uvicorn's ANSI copy
        config["formatters"] = {"default": json_formatter, "access": dict(json_formatter)}
    python_level = "DEBUG" if level == "trace" else level.upper()  # uvicorn's trace is below DEBUG
    config["loggers"]["mcdropout"] = {"handlers": ["default"], "level": python_level, "propagate": False}
    return config
