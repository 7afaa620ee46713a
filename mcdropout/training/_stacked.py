"""Many small dropout MLPs trained together as one batched computation.

A grid search over dropout rate and tau, repeated over data splits, trains
dozens to hundreds of networks of one shape. Each is tiny, so trained one after
another the time goes to Python and kernel launches. Stacked along a leading
model dimension (weights ``[M, in, out]``, one batched matmul per layer) they
train in the time of a few. The models stay independent: each has its own
rows, mini-batch order, dropout rate and weight decay, and Adam's update is
element-wise, so stacking changes no model's arithmetic.

The networks follow Gal & Ghahramani's UCI protocol: dropout before every dense
layer (input, hidden, before the output), ReLU, Glorot-uniform weights and zero
biases (Keras' defaults, which the published numbers were made with), and L2
weight decay ``reg * sum(W**2)`` on the weight matrices added to the loss.
"""

from __future__ import annotations

import math
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mcdropout.progress import Progress

LOSSES = ("mse", "cross_entropy")
_LEVELS = 1 << 16  # masks compare 16 random bits with round(p * 2**16): p resolved to 2**-16
MIN_IMPROVEMENT = 0.005  # early stopping: a validation loss counts as better when 0.5% below the best so far


def _draw16(shape: torch.Size, generator: torch.Generator | None) -> torch.Tensor:
    """Uniform int16 values, four from each 64-bit draw (a third of the cost of ``torch.rand``)."""
    count = math.prod(shape)
    words = torch.empty(-(-count // 4), dtype=torch.int64).random_(-(1 << 63), None, generator=generator)
    return words.view(torch.int16)[:count].view(shape)


@dataclass
class StackedMLP:
    """``M`` MLPs of one shape: ``weights[i]`` is ``[M, in, out]``, ``biases[i]`` is ``[M, 1, out]``."""

    weights: list[torch.Tensor]
    biases: list[torch.Tensor]
    dropout: torch.Tensor  # [M], the rate of every dropout layer of each model
    epochs: torch.Tensor | None = None  # [M], the epochs each model's weights were taken after (early stopping)

    @property
    def count(self) -> int:
        return len(self.dropout)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None, *,
                sample: bool = True) -> torch.Tensor:
        """``x`` ``[M, rows, in]`` -> ``[M, rows, out]`` with fresh dropout masks for every row
        (``sample=False``: dropout off, the expected network of inverted dropout)."""
        level = torch.round(self.dropout.double() * _LEVELS)
        threshold = (level - _LEVELS // 2).to(torch.int16).view(-1, 1, 1)
        scale = (_LEVELS / (_LEVELS - level)).to(x.dtype).view(-1, 1, 1)
        hidden = x
        last = len(self.weights) - 1
        for index, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            if sample:
                hidden = hidden * torch.where(_draw16(hidden.shape, generator) >= threshold, scale, 0.0)
            hidden = torch.baddbmm(bias, hidden, weight)
            if index < last:
                hidden = torch.relu(hidden)
        return hidden

    def select(self, index: int) -> nn.Sequential:
        """Model ``index`` as the ``mlp`` architecture with input dropout (``architectures.build``)."""
        from mcdropout.bundle import architectures

        sizes = [w.shape[1] for w in self.weights] + [self.weights[-1].shape[2]]
        model = architectures.build("mlp", {
            "in_features": sizes[0], "out_features": sizes[-1], "hidden": sizes[1:-1],
            "dropout": float(self.dropout[index]), "input_dropout": True,
        })
        linears = [m for m in model if isinstance(m, nn.Linear)]
        with torch.no_grad():
            for linear, weight, bias in zip(linears, self.weights, self.biases):
                linear.weight.copy_(weight[index].T)
                linear.bias.copy_(bias[index, 0])
        return model.eval()


def initialise(count: int, sizes: Sequence[int], dropout: torch.Tensor, generator: torch.Generator) -> StackedMLP:
    """Glorot-uniform weights and zero biases, independently for each of ``count`` models."""
    weights, biases = [], []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        weight = (torch.rand(count, fan_in, fan_out, generator=generator) * 2 - 1) * limit
        weights.append(weight.requires_grad_())
        biases.append(torch.zeros(count, 1, fan_out, requires_grad=True))
    return StackedMLP(weights, biases, dropout.to(torch.float32))


def train(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    hidden: Sequence[int],
    dropout: Sequence[float],
    weight_decay: Sequence[float],
    epochs: int,
    loss: str = "mse",
    classes: int | None = None,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    processes: int = 1,
    validation: tuple[torch.Tensor, torch.Tensor] | None = None,
    patience: int | None = None,
    stop_at: Sequence[int] | None = None,
    description: str = "training",
    quiet: bool = False,
) -> StackedMLP:
    """Train ``M = len(dropout)`` MLPs, model ``m`` on rows ``x[m]`` ``[N, in]`` with targets ``y[m]``.

    Regression (``loss="mse"``): ``y`` is ``[M, N, outputs]``. Classification
    (``loss="cross_entropy"``): ``y`` is ``[M, N]`` class indices and ``classes``
    the number of classes. Each epoch shuffles every model's rows on its own and
    walks them in mini-batches of ``batch_size`` (the last one smaller), Adam
    with default settings, like Keras' ``fit``.

    With ``processes > 1`` the models are split into that many contiguous shards,
    each trained in its own process on one thread: the element-wise work of these
    small networks is bound by memory and Python, which two single-threaded
    processes use better than one process with two threads. Results depend on
    ``seed`` and ``processes`` (each shard has its own random stream), not on the
    machine. A lone shard also runs on one thread, for the same reason.

    Early stopping: with ``validation`` (rows ``[M, V, in]`` and their targets,
    standardised like ``x``) and ``patience``, each model's loss on its validation
    rows (dropout off) is measured after every epoch; a model keeps the weights of
    its best epoch, and training stops once every model has gone ``patience``
    epochs without improving by MIN_IMPROVEMENT (or after ``epochs``). With
    ``stop_at`` (epochs per model, each at most ``epochs``) model ``m`` keeps its
    weights after epoch ``stop_at[m]``: the re-training of early-stopped models on
    more rows. The returned stack's ``epochs`` says which epoch each model's
    weights are from.
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; expected one of {', '.join(LOSSES)}")
    count = x.shape[0]
    if len(dropout) != count or len(weight_decay) != count:
        raise ValueError(f"{count} models but {len(dropout)} dropout rates and {len(weight_decay)} weight decays")
    if loss == "cross_entropy" and classes is None:
        raise ValueError("classification needs the number of classes")
    if (validation is None) != (patience is None):
        raise ValueError("early stopping needs both validation rows and a patience")
    if patience is not None and patience < 1:
        raise ValueError(f"patience must be >= 1 epoch, got {patience}")
    if stop_at is not None and (len(stop_at) != count or not all(1 <= e <= epochs for e in stop_at)):
        raise ValueError(f"stop_at must give each of the {count} models an epoch in 1..{epochs}, got {list(stop_at)}")
    options = {"hidden": list(hidden), "epochs": epochs, "loss": loss, "classes": classes, "batch_size": batch_size,
               "lr": lr, "patience": patience}
    shards = [s for s in torch.arange(count).tensor_split(max(1, min(processes, count))) if len(s)]
    jobs = [(x[s], y[s], [dropout[i] for i in s], [weight_decay[i] for i in s], seed + k, options,
             None if validation is None else (validation[0][s], validation[1][s]),
             None if stop_at is None else [stop_at[i] for i in s])
            for k, s in enumerate(shards)]
    if len(jobs) == 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return _train_shard(*jobs[0], description=description, quiet=quiet)
        finally:
            torch.set_num_threads(threads)
    context = multiprocessing.get_context("spawn")  # fork is unsafe once torch has started threads
    with ProcessPoolExecutor(len(jobs) - 1, mp_context=context, initializer=torch.set_num_threads,
                             initargs=(1,)) as pool:
        others = [pool.submit(_train_shard, *job) for job in jobs[1:]]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            first = _train_shard(*jobs[0], description=f"{description} ({len(jobs)} processes)", quiet=quiet)
        finally:
            torch.set_num_threads(threads)
        parts = [first, *(future.result() for future in others)]
    return StackedMLP([torch.cat(w) for w in zip(*(p.weights for p in parts))],
                      [torch.cat(b) for b in zip(*(p.biases for p in parts))],
                      torch.cat([p.dropout for p in parts]), torch.cat([p.epochs for p in parts]))


def _train_shard(x: torch.Tensor, y: torch.Tensor, dropout: list[float], weight_decay: list[float], seed: int,
                 options: dict, validation: tuple[torch.Tensor, torch.Tensor] | None = None,
                 stop_at: list[int] | None = None, *, description: str = "", quiet: bool = True) -> StackedMLP:
    count, rows, features = x.shape
    outputs = options["classes"] if options["loss"] == "cross_entropy" else y.shape[-1]
    batch_size = options["batch_size"]
    generator = torch.Generator().manual_seed(seed)
    model = initialise(count, [features, *options["hidden"], outputs], torch.tensor(dropout), generator)
    decay = torch.tensor(weight_decay, dtype=torch.float32)
    parameters = [*model.weights, *model.biases]
    optimiser = torch.optim.Adam(parameters, lr=options["lr"], fused=True)  # one kernel: a third of the step time
    keeper = _Keeper(parameters, stop_at, options["epochs"])
    with Progress(options["epochs"], description, "epoch", quiet=quiet) as progress:
        for epoch in range(1, options["epochs"] + 1):
            gather_index = torch.rand(count, rows, generator=generator).argsort(dim=1)
            x_epoch = x.gather(1, gather_index.unsqueeze(-1).expand(-1, -1, features))
            y_epoch = y.gather(1, gather_index if y.dim() == 2 else gather_index.unsqueeze(-1).expand_as(y))
            for start in range(0, rows, batch_size):
                optimiser.zero_grad(set_to_none=True)
                output = model.forward(x_epoch[:, start:start + batch_size], generator)
                per_model = _loss(output, y_epoch[:, start:start + batch_size], options["loss"])
                penalty = sum((w * w).sum(dim=(1, 2)) for w in model.weights)
                objective = (per_model + decay * penalty).sum()
                objective.backward()
                optimiser.step()
            progress.update(1, loss=float(per_model.detach().mean()))
            if validation is not None:
                with torch.no_grad():
                    held_out = _loss(model.forward(validation[0], sample=False), validation[1], options["loss"])
                if keeper.after_validation(epoch, held_out, options["patience"]):
                    break
            elif keeper.after_epoch(epoch):
                break
    model.epochs = keeper.restore()
    for tensor in parameters:
        tensor.requires_grad_(False)
    return model


class _Keeper:
    """The weights each model keeps: its best epoch's on the validation rows, its ``stop_at`` epoch's, or the last."""

    def __init__(self, parameters: list[torch.Tensor], stop_at: list[int] | None, epochs: int) -> None:
        count = len(parameters[0])
        self.parameters = parameters
        self.kept = [p.detach().clone() for p in parameters]
        self.best = torch.full((count,), math.inf)
        self.epochs = torch.full((count,), epochs, dtype=torch.int64)
        self.stop_at = None if stop_at is None else torch.tensor(stop_at, dtype=torch.int64)
        self.tracking = False

    def _keep(self, chosen: torch.Tensor, epoch: int) -> None:
        self.tracking = True
        if chosen.any():
            for kept, parameter in zip(self.kept, self.parameters):
                kept[chosen] = parameter.detach()[chosen]
            self.epochs[chosen] = epoch

    def after_validation(self, epoch: int, loss: torch.Tensor, patience: int) -> bool:
        """Keep the models that improved; True when every model has waited ``patience`` epochs in vain."""
        improved = loss < self.best * (1 - MIN_IMPROVEMENT)
        self.best = torch.where(improved, loss, self.best)
        self._keep(improved, epoch)
        return bool((epoch - self.epochs >= patience).all())

    def after_epoch(self, epoch: int) -> bool:
        """Keep the models whose ``stop_at`` epoch this is; True once the last of them is kept."""
        if self.stop_at is None:
            return False
        self._keep(self.stop_at == epoch, epoch)
        return epoch >= int(self.stop_at.max())

    def restore(self) -> torch.Tensor:
        """Put the kept weights back (without early stopping or ``stop_at``: the last epoch's); their epochs."""
        if self.tracking:
            with torch.no_grad():
                for kept, parameter in zip(self.kept, self.parameters):
                    parameter.copy_(kept)
        return self.epochs


def _loss(output: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """The loss of each model on its mini-batch, ``[M]``."""
    if kind == "mse":
        return ((output - target) ** 2).mean(dim=(1, 2))
    count, rows, classes = output.shape
    return F.cross_entropy(output.reshape(-1, classes), target.reshape(-1), reduction="none").view(count, rows).mean(1)


@torch.no_grad()
def mc_outputs(model: StackedMLP, x: torch.Tensor, samples: int, *, seed: int = 0,
               chunk_rows: int = 1 << 20):
    """Yield ``[M, t, rows, out]`` outputs of successive chunks of the ``samples`` MC passes over ``x`` ``[M, rows, in]``."""
    generator = torch.Generator().manual_seed(seed)
    count, rows, features = x.shape
    per_chunk = max(1, min(samples, chunk_rows // max(count * rows, 1)))
    for start in range(0, samples, per_chunk):
        t = min(per_chunk, samples - start)
        replicated = x.unsqueeze(1).expand(count, t, rows, features).reshape(count, t * rows, features)
        yield model.forward(replicated, generator).view(count, t, rows, -1)


@torch.no_grad()
def regression_scores(model: StackedMLP, x: torch.Tensor, y: torch.Tensor, taus: torch.Tensor, samples: int, *,
                      y_mean: torch.Tensor, y_std: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
    """Per model: RMSE of the MC mean ``[M]`` and Gal & Ghahramani's test log-likelihood ``[M, K]``.

    ``y`` ``[M, rows, out]`` and the candidate precisions ``taus`` ``[M, K]`` are in
    the target's units; ``y_mean`` and ``y_std`` ``[M, out]`` undo each model's
    target standardisation. The log-likelihood per point is
    ``logsumexp_t(-tau/2 (y - yhat_t)^2) - log T - log(2 pi)/2 + log(tau)/2``,
    streamed over chunks of passes.
    """
    count, candidates = taus.shape
    tau = taus.double().view(count, 1, 1, 1, candidates)
    shift, scale = y_mean.double().view(count, 1, 1, -1), y_std.double().view(count, 1, 1, -1)
    total = torch.zeros(y.shape, dtype=torch.float64)
    log_sum = torch.full((*y.shape, candidates), -math.inf, dtype=torch.float64)
    for chunk in mc_outputs(model, x, samples, seed=seed, chunk_rows=max(1, (1 << 20) // candidates)):
        predictions = chunk.double() * scale + shift
        total += predictions.sum(dim=1)
        squared = (y.unsqueeze(1).double() - predictions).unsqueeze(-1) ** 2
        log_sum = torch.logaddexp(log_sum, torch.logsumexp(-0.5 * tau * squared, dim=1))
    rmse = ((y.double() - total / samples) ** 2).mean(dim=(1, 2)).sqrt()
    ll = log_sum - math.log(samples) - 0.5 * math.log(2 * math.pi) + 0.5 * tau.view(count, 1, 1, candidates).log()
    return {"rmse": rmse, "log_likelihood": ll.mean(dim=(1, 2))}


@torch.no_grad()
def classification_scores(model: StackedMLP, x: torch.Tensor, labels: torch.Tensor, samples: int, *,
                          seed: int = 0) -> dict[str, torch.Tensor]:
    """Per model: accuracy and mean log-probability of the true class under the MC-averaged softmax."""
    probs = None
    for chunk in mc_outputs(model, x, samples, seed=seed):
        part = torch.softmax(chunk.double(), dim=-1).sum(dim=1)
        probs = part if probs is None else probs + part
    probs /= samples
    chosen = probs.gather(2, labels.unsqueeze(-1)).squeeze(-1)
    return {"accuracy": (probs.argmax(-1) == labels).double().mean(1),
            "log_likelihood": chosen.clamp_min(1e-300).log().mean(1)}
