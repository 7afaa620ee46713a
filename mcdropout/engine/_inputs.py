"""Named inputs (a Hugging Face batch) and named outputs (a ``ModelOutput``).

Inputs: a dict of tensors with rows along dim 0 (``input_ids``,
``attention_mask``, ``token_type_ids``, ``pixel_values``, ...) is held in a
:class:`RowDict`, which the engine slices, replicates for the samples and moves
like one batch-first tensor; the model is called with the tensors as keyword
arguments. Padding is the model's to honour (``attention_mask``): a row's answer
depends on its values and on the padded length, so rows padded to the same length
are answered independently of the batch they come in.

Outputs: a tensor is the answer. A mapping (a ``ModelOutput``, a dict) gives
its ``logits`` unless ``output=`` names another key; a tuple or list is read as
before (one tensor, or a regression model's ``(mean, log_variance)``) unless
``output=`` picks an index.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from mcdropout.errors import InputError

DEFAULT_OUTPUT = "logits"


class RowDict:
    """Named tensors that share their first dimension, the rows."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors
        first = next(iter(tensors.values()))
        self._rows = first.shape[0]
        # What a probe's plans are kept by: the names, each row's shape and each dtype.
        self.shape = (self._rows, *((name, tuple(t.shape[1:]), str(t.dtype)) for name, t in tensors.items()))

    def __len__(self) -> int:
        return self._rows

    def __getitem__(self, index) -> RowDict:
        return RowDict({name: tensor[index] for name, tensor in self.tensors.items()})

    def dim(self) -> int:
        return 1

    def repeat(self, samples: int, *_ones: int) -> RowDict:
        return RowDict({name: t.repeat(samples, *([1] * (t.dim() - 1))) for name, t in self.tensors.items()})

    def expand(self, samples: int, *_rest: int) -> RowDict:
        return RowDict({name: t.expand(samples, *t.shape[1:]) for name, t in self.tensors.items()})

    @property
    def device(self) -> torch.device:
        return next(iter(self.tensors.values())).device

    @property
    def is_cpu(self) -> bool:
        return all(t.is_cpu for t in self.tensors.values())

    def to(self, device: torch.device) -> RowDict:
        return RowDict({name: t.to(device) for name, t in self.tensors.items()})

    def numel(self) -> int:  # bytes, with element_size() = 1: what the planner multiplies
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def element_size(self) -> int:
        return 1


def call_with_keywords(model: torch.nn.Module):
    """The model's forward for :class:`RowDict` inputs: its tensors as keyword arguments."""
    return lambda batch: model(**batch.tensors)


def check_output_option(output) -> str | int | None:
    if output is None or (isinstance(output, str) and output) or (isinstance(output, int) and not isinstance(output, bool)):
        return output
    raise InputError(f"output must be the name of a model output (e.g. 'logits'), a tuple index, or None; got {output!r}")


def select_output(outputs, output: str | int | None):
    """The part of a model's outputs that the engine reads (see the module docstring)."""
    if isinstance(outputs, Mapping):
        key = DEFAULT_OUTPUT if output is None else output
        if key not in outputs:
            found = ", ".join(repr(k) for k in outputs.keys())
            hint = "pass output='<name>' to choose one" if output is None else "pass one of them as output="
            raise InputError(f"the model returned a {type(outputs).__name__} without {key!r} (it has {found}); {hint}")
        return outputs[key]
    if output is None:
        return outputs
    if isinstance(outputs, (tuple, list)):
        if not isinstance(output, int) or not -len(outputs) <= output < len(outputs):
            raise InputError(f"output={output!r} does not pick one of the model's {len(outputs)} outputs (a tuple)")
        return outputs[output]
    raise InputError(f"output={output!r} was given, but the model returned a {type(outputs).__name__}, not named outputs")
