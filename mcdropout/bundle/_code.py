"""Architectures named by code rather than by registry name: import paths and a bundle's own ``model.py``.

``"my_pkg.nets:Net"`` names an :class:`torch.nn.Module` subclass in an installed (importable) module;
it is called with the manifest's config. Only module classes are accepted, so a manifest cannot name an
arbitrary function such as ``subprocess:run`` and have it called with its config. Importing a module runs
its code (``this`` prints, ``venv.__main__`` exits, and the working folder may be on ``sys.path``), so an
import path is imported only when bundle code is trusted or when its module is in (or under) one of the
modules the operator allows (``allowed_modules``; the service's ``MCD_ALLOWED_ARCHITECTURE_MODULES``).

``"model.py:Net"`` names a callable in the file ``model.py`` of the bundle folder. Running a bundle's
file is running whatever code the bundle carries, so it happens only when the caller trusts bundle code
(``load_bundle(..., trust_code=True)``; the service's ``MCD_TRUST_BUNDLE_CODE``).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType

from torch import nn

from mcdropout.errors import BundleError

BUNDLE_CODE = "model.py"
_MODULE_PREFIX = "_mcdropout_bundle_code_"  # sys.modules names of loaded bundle files: prefix + content hash
_SOURCE = "__mcdropout_source__"
ALLOWED_MODULES_ENV = "MCD_ALLOWED_ARCHITECTURE_MODULES"
TRUST_HINT = ("load_bundle(..., trust_code=True); on the command line MCD_TRUST_BUNDLE_CODE=1 or"
              " --trust-bundle-code (`mcdropout serve`, `score` and `evaluate`)")


def is_code_path(name: str) -> bool:
    """True for ``module:Class`` and ``model.py:Class`` names (registry names hold no colon)."""
    return ":" in name


def allowed_modules_from_env() -> tuple[str, ...]:
    """The modules named by ``MCD_ALLOWED_ARCHITECTURE_MODULES`` (comma-separated), none when unset."""
    return parse_modules(os.environ.get(ALLOWED_MODULES_ENV, ""))


def parse_modules(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """Module names from a comma-separated string or an iterable; each must be a dotted identifier."""
    if value is None:
        return ()
    names = [n.strip() for n in (value.split(",") if isinstance(value, str) else value)]
    names = [n for n in names if n]
    for module in names:
        if not all(part.isidentifier() for part in module.split(".")):
            raise BundleError(f"allowed architecture module {module!r} is not a dotted module name (my_pkg.nets)")
    return tuple(names)


def is_allowed(module_name: str, allowed: Iterable[str]) -> bool:
    """True when ``module_name`` is one of ``allowed`` or inside one of them (``my_pkg`` allows ``my_pkg.nets``)."""
    return any(module_name == module or module_name.startswith(module + ".") for module in allowed)


def resolve(name: str, folder: Path | None, trust_code: bool,
            allowed_modules: Iterable[str] = ()) -> Callable[..., nn.Module]:
    """The builder that ``name`` denotes; errors say what is wrong and what is allowed.

    An import path's module is imported only with ``trust_code`` or when it is in ``allowed_modules``:
    the refusal comes before any import, so nothing of the module runs.
    """
    module_name, _, attribute = name.partition(":")
    if not module_name or not attribute:
        raise BundleError(f"architecture {name!r}: expected 'package.module:Class' or '{BUNDLE_CODE}:Class'")
    if module_name != BUNDLE_CODE and not (trust_code or is_allowed(module_name, allowed_modules)):
        raise BundleError(f"architecture {name!r} is an import path, and importing a module runs its code: it is"
                          f" imported only when its module is allowed ({ALLOWED_MODULES_ENV}={module_name}, or"
                          f" load_bundle(..., allowed_modules=[{module_name!r}])) or bundle code is trusted"
                          f" ({TRUST_HINT})")
    if module_name == BUNDLE_CODE:
        if folder is None:
            raise BundleError(f"architecture {name!r} is code in a bundle folder; it is built only from a bundle")
        if not trust_code:
            raise BundleError(f"architecture {name!r} is code carried by the bundle ({folder / BUNDLE_CODE}), which"
                              f" runs only when bundle code is trusted: {TRUST_HINT}")
        builder = _attribute(_bundle_module(folder / BUNDLE_CODE), attribute, name)
        if not callable(builder):
            raise BundleError(f"architecture {name!r}: {attribute!r} in {folder / BUNDLE_CODE} is not callable")
        return builder
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise BundleError(f"architecture {name!r}: cannot import module {module_name!r} ({error}); install the"
                          " package that defines it, or ship the class in the bundle's model.py") from None
    except (Exception, SystemExit) as error:  # noqa: BLE001 - an allowed module's import failing is the bundle's
        raise BundleError(f"architecture {name!r}: importing module {module_name!r} failed:"
                          f" {type(error).__name__}: {error}") from None
    builder = _attribute(module, attribute, name)
    if not (isinstance(builder, type) and issubclass(builder, nn.Module)):
        raise BundleError(f"architecture {name!r}: {attribute!r} is a {type(builder).__name__}, not a"
                          " torch.nn.Module subclass; an import path must name a module class (register a builder"
                          " function under the entry-point group 'mcdropout.architectures' instead)")
    return builder


def _attribute(module: ModuleType, dotted: str, name: str) -> object:
    value: object = module
    for part in dotted.split("."):
        if not hasattr(value, part):
            raise BundleError(f"architecture {name!r}: {getattr(module, '__file__', module.__name__)} defines no"
                              f" {dotted!r}")
        value = getattr(value, part)
    return value


def _bundle_module(file: Path) -> ModuleType:
    """Execute a bundle's ``model.py`` once per content: the same file in two bundles is one module."""
    if file.is_symlink():  # a bundle's files are its own: a link could lead anywhere
        raise BundleError(f"{file}: is a symbolic link; a bundle's files must be regular files in its folder")
    if not file.is_file():
        raise BundleError(f"{file}: missing (the manifest's architecture names it)")
    source = file.read_bytes()
    module_name = _MODULE_PREFIX + hashlib.sha256(source).hexdigest()[:16]
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    setattr(module, _SOURCE, source)  # its file may be gone later (a staging folder, a replaced bundle)
    sys.modules[module_name] = module  # dataclasses and pickling look classes up by their module's name
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as error:  # noqa: BLE001 - the bundle's code: what it raises is its failure
        del sys.modules[module_name]
        raise BundleError(f"{file}: running it failed: {type(error).__name__}: {error}") from None
    return module


def import_path_of(cls: type) -> str:
    """The ``module:QualName`` that names ``cls``, or a :class:`BundleError` saying why it cannot be named."""
    module_name, qualname = cls.__module__, cls.__qualname__
    if module_name.startswith(_MODULE_PREFIX):
        return f"{BUNDLE_CODE}:{qualname}"
    if module_name == "__main__":
        raise BundleError(f"{qualname} is defined in __main__ (a script or notebook), which a server cannot"
                          " import; move it into a module on the Python path (my_pkg/nets.py) or pass code=FILE"
                          " to ship it as the bundle's model.py")
    if "<locals>" in qualname:
        raise BundleError(f"{module_name}.{qualname} is defined inside a function, so nothing can import it;"
                          " define it at the top level of its module")
    try:
        found = _attribute(importlib.import_module(module_name), qualname, f"{module_name}:{qualname}")
    except (ImportError, BundleError):
        found = None
    if found is not cls:
        raise BundleError(f"{module_name}:{qualname} does not import back as the model's class (the module is"
                          " not on the Python path, or was loaded from a file); pass architecture= explicitly")
    return f"{module_name}:{qualname}"


def source_of(cls: type, architecture: str) -> bytes:
    """The text of the ``model.py`` that defined ``cls`` when it came from a loaded bundle; else an error."""
    source = getattr(sys.modules.get(cls.__module__), _SOURCE, None)
    if cls.__module__.startswith(_MODULE_PREFIX) and source is not None:
        return source
    raise BundleError(f"architecture {architecture!r} is the bundle's own {BUNDLE_CODE}: pass code=FILE, the"
                      " Python file that defines it")
