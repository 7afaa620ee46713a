"""Which extra brings which optional package, so that a missing one is reported with its install command."""

from __future__ import annotations

# Top-level module -> the extra of pyproject.toml that installs it.
EXTRA_OF: dict[str, str] = {
    "sklearn": "train",
    "matplotlib": "train",
    "fastapi": "serve",
    "uvicorn": "serve",
    "pydantic_settings": "serve",
    "prometheus_client": "serve",
    "orjson": "serve",
    "fastapi_offline": "serve",
    "pythonjsonlogger": "serve",
    "httpx": "client",
    "ray": "ray",
}


def missing_extra(error: ImportError) -> str | None:
    """'needs the train extra: pip install ...' for a missing optional package; None for anything else."""
    module = (getattr(error, "name", None) or "").partition(".")[0]
    extra = EXTRA_OF.get(module)
    if not isinstance(error, ModuleNotFoundError) or extra is None:
        return None
    return f"needs the {extra} extra (no module named {module!r}): pip install 'mcdropout[{extra}]'"
