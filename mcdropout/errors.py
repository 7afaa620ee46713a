"""The library's one error tree: every error it raises on purpose is an :class:`MCDropoutError`.

Each is also a ``ValueError`` where the cause is a value the caller passed (an input,
a bundle, a table), so code written against the built-in exceptions keeps working.
The client has its own tree (:class:`mcdropout.client.ServiceError`), since it
imports nothing of the library's torch side.
"""

from __future__ import annotations


class MCDropoutError(Exception):
    """Root of the errors the library raises on purpose."""


class InputError(MCDropoutError, ValueError):
    """Inputs, settings or a model that a prediction cannot be made from; the message says which and why."""


class InputTypeError(InputError, TypeError):
    """An argument of the wrong kind (a layer :class:`mcdropout.DropConnect` cannot wrap): a ``TypeError``, as
    Python raises for one, and an :class:`InputError` like every other input the library refuses."""


class BundleError(MCDropoutError, ValueError):
    """A bundle that cannot be loaded or saved; the message names the file and the problem."""


class TableError(MCDropoutError, ValueError):
    """A table file that cannot be read as rows of numbers; the message names the file, the column and the rows."""


class ScoringError(MCDropoutError, ValueError):
    """Scoring cannot start or go on; the message says why and what to do."""
