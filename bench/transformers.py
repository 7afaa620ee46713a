"""Every dropout in a transformer and a stacked LSTM: mcdropout against a naive loop, baal and torch-uncertainty.

    .venv/bin/python bench/transformers.py [--repeats 3] [--models bert,lstm] [--skip-memory]

Models (random initialisation, nothing downloaded):

- ``bert``: a BERT-shaped classifier (transformers' ``BertForSequenceClassification``:
  4 layers, hidden 256, 4 heads, feed-forward 1,024, sequence 128, sdpa attention),
  hidden and attention dropout 0.1, batch 32 (a quarter of the rows padded), T = 30;
- ``lstm``: embeddings -> ``nn.LSTM(128, 256, num_layers=2, dropout=0.3)`` -> dropout
  -> linear, sequence 64, batch 32, T = 30.

Contenders, each run once per repetition in a fresh random order (seeded):

- ``mcdropout``: ``MCPredictor(model, task="classification").predict(batch)``;
- ``naive loop``: T forward passes in train mode (the reference distribution: it samples
  every dropout, each row its own masks);
- ``baal``: ``MCDropoutModule`` + ``ModelWrapper.predict_on_batch`` (the batch replicated
  T times, one pass), which swaps ``nn.Dropout`` modules only;
- ``torch-uncertainty``: ``mc_dropout(on_batch=True)``, which switches ``_DropoutNd``
  modules only.

The table gives median seconds per call, the ratio to mcdropout, and which dropouts each
contender samples. Agreement: each contender's predictive mean and variance of the class
probabilities against the naive loop's, as the largest |difference| / its Monte Carlo
standard error over rows and classes (both estimated from the T samples; for the variance,
the standard error of a sample variance, sqrt(2 / (T - 1)) times it, for each side). Memory:
the peak resident memory a call adds, in a fresh process, at T and at 2 T.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# This file's name would shadow the transformers package for every import below (baal imports it too).
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]

import psutil  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import mcdropout as mcd  # noqa: E402

SAMPLES = 30
BATCH = 32


class TokenClassifier(nn.Module):
    """What the contenders are given: (rows, length) token ids in, logits out (0 is padding)."""

    def __init__(self, model: nn.Module, masked: bool) -> None:
        super().__init__()
        self.model = model
        self.masked = masked

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not self.masked:
            return self.model(ids)
        return self.model(input_ids=ids, attention_mask=(ids != 0).long()).logits


class StackedLSTM(nn.Module):
    def __init__(self, vocabulary: int = 1000, width: int = 128, hidden: int = 256) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocabulary, width, padding_idx=0)
        self.lstm = nn.LSTM(width, hidden, num_layers=2, dropout=0.3, batch_first=True)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(hidden, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(ids))
        return self.head(self.drop(out[:, -1]))


def build(name: str) -> tuple[nn.Module, torch.Tensor, dict[str, str]]:
    """The model (in eval mode), a batch of token ids, and which dropouts each contender samples."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    if name == "bert":
        import transformers

        config = transformers.BertConfig(
            vocab_size=1000, hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
            max_position_embeddings=128, num_labels=2, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
        )
        config._attn_implementation = "sdpa"
        model = TokenClassifier(transformers.BertForSequenceClassification(config), masked=True)
        ids = torch.randint(1, 1000, (BATCH, 128), generator=generator)
        for row in range(0, BATCH, 4):  # a quarter of the rows padded
            ids[row, 64 + row:] = 0
        every = "hidden (10), attention (4 layers)"
        fewer = "hidden (10); attention dropout off"
    else:
        model = StackedLSTM()
        ids = torch.randint(1, 1000, (BATCH, 64), generator=generator)
        every = "between LSTM layers, head"
        fewer = "head; between LSTM layers off"
    samples = {"mcdropout": every, "naive loop": every, "baal": fewer, "torch-uncertainty": fewer}
    return model.eval(), ids, samples


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.double(), dim=-1)


# -- contenders: (model, ids, T) -> callable returning sampled probabilities (T, rows, classes) ------------


def engine(model, ids, samples):
    predictor = mcd.MCPredictor(model, task="classification", samples=samples)
    seeds = iter(range(10**9))
    return lambda: predictor.predict(ids, seed=next(seeds), return_samples=True).samples.transpose(0, 1)


def naive_loop(model, ids, samples):
    def run():
        with torch.inference_mode():
            model.train()  # no BatchNorm-like module in these models
            try:
                return torch.stack([probabilities(model(ids)) for _ in range(samples)])
            finally:
                model.eval()

    return run


def baal_wrapper(model, ids, samples):
    from baal.bayesian.dropout import MCDropoutModule
    from baal.modelwrapper import ModelWrapper, TrainingArgs

    wrapper = ModelWrapper(MCDropoutModule(copy.deepcopy(model)).eval(),
                           TrainingArgs(use_cuda=False, replicate_in_memory=True))

    def run():
        out = wrapper.predict_on_batch(ids, iterations=samples)  # (rows, classes, T)
        return probabilities(out.permute(2, 0, 1))

    return run


def torch_uncertainty_wrapper(model, ids, samples):
    spec = importlib.util.find_spec("torch_uncertainty")
    if spec is None or spec.origin is None:
        raise ImportError("torch-uncertainty is not installed (make bench installs it)")
    path = Path(spec.origin).parent / "methods" / "mc_dropout.py"  # alone: the package wants lightning
    module_spec = importlib.util.spec_from_file_location("tu_mc_dropout", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    wrapped = module.mc_dropout(copy.deepcopy(model), num_estimators=samples, on_batch=True,
                                task="classification").eval()

    def run():
        with torch.inference_mode():
            return probabilities(wrapped(ids).reshape(samples, len(ids), -1))

    return run


CONTENDERS = {"mcdropout": engine, "naive loop": naive_loop, "baal": baal_wrapper,
              "torch-uncertainty": torch_uncertainty_wrapper}


def timed(contenders: dict[str, Callable], repeats: int) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    names = list(contenders)
    outputs = {name: contenders[name]() for name in names}  # warm-up, and the samples compared
    times: dict[str, list[float]] = {name: [] for name in names}
    order = random.Random(0)
    for _ in range(repeats):
        for name in order.sample(names, len(names)):
            start = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}, outputs


def agreement(samples: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """Largest |difference| / MC standard error of the mean and of the variance, over rows and classes."""
    count = samples.shape[0]
    mean, ref_mean = samples.mean(0), reference.mean(0)
    var, ref_var = samples.var(0), reference.var(0)
    tiny = torch.finfo(torch.float64).tiny
    mean_z = (mean - ref_mean).abs() / ((var + ref_var) / count).sqrt().clamp_min(tiny)
    var_z = (var - ref_var).abs() / ((var**2 + ref_var**2) * 2 / (count - 1)).sqrt().clamp_min(tiny)
    return float(mean_z.max()), float(var_z.max())


def memory_added(model_name: str, contender: str, samples: int) -> float:
    """MiB of peak resident memory one call adds, measured in a fresh process."""
    command = [sys.executable, __file__, "--memory-of", model_name, contender, str(samples)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def _memory_child(model_name: str, contender: str, samples: int) -> None:
    model, ids, _ = build(model_name)
    run = CONTENDERS[contender](model, ids, samples)
    run()  # warm-up at a smaller size would not do: the first call's pages are what is measured
    process = psutil.Process()
    base = process.memory_info().rss
    peak = [base]
    done = threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    run()
    done.set()
    watcher.join()
    print((peak[0] - base) / 2**20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="bert,lstm")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-of", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_of:
        _memory_child(args.memory_of[0], args.memory_of[1], int(args.memory_of[2]))
        return
    torch.set_num_threads(torch.get_num_threads())
    report = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs,"
                         f" torch {torch.__version__}, {torch.get_num_threads()} threads", "models": {}}
    for name in args.models.split(","):
        model, ids, sampled = build(name)
        contenders = {}
        for contender, make in CONTENDERS.items():
            try:
                contenders[contender] = make(model, ids, SAMPLES)
            except ImportError as error:
                print(f"{contender} skipped: {error}", file=sys.stderr)
        seconds, outputs = timed(contenders, args.repeats)
        fastest_other = min(value for key, value in seconds.items() if key != "mcdropout")
        rows = []
        for contender, value in seconds.items():
            mean_z, var_z = agreement(outputs[contender], outputs["naive loop"])
            rows.append({"contender": contender, "seconds": round(value, 3),
                         "x mcdropout": round(value / seconds["mcdropout"], 2), "samples": sampled[contender],
                         "mean |z|max": round(mean_z, 2), "variance |z|max": round(var_z, 2)})
        entry = {"rows": rows, "speed-up over the fastest other": round(fastest_other / seconds["mcdropout"], 2)}
        if not args.skip_memory:
            entry["MiB added per call (mcdropout)"] = {
                f"T={t}": round(memory_added(name, "mcdropout", t), 1) for t in (SAMPLES, 2 * SAMPLES)}
            entry["MiB added per call (baal)"] = {
                f"T={t}": round(memory_added(name, "baal", t), 1) for t in (SAMPLES, 2 * SAMPLES)}
        report["models"][name] = entry
        print(f"\n{name}: batch {BATCH}, T = {SAMPLES}, {args.repeats} repetitions (median seconds per call)")
        print(f"{'contender':<18} {'seconds':>8} {'x mcd':>6} {'mean z':>7} {'var z':>6}  samples")
        for row in rows:
            print(f"{row['contender']:<18} {row['seconds']:>8.3f} {row['x mcdropout']:>6.2f}"
                  f" {row['mean |z|max']:>7.2f} {row['variance |z|max']:>6.2f}  {row['samples']}")
        for key in ("MiB added per call (mcdropout)", "MiB added per call (baal)"):
            if key in entry:
                print(f"{key}: {entry[key]}")
        print(f"speed-up over the fastest other contender: {entry['speed-up over the fastest other']}x")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
