"""The data sets the shipped models are trained on: scikit-learn's bundled sets and generated ones.

Nothing is downloaded. Each loader returns a :class:`Split` made reproducibly
from a seed: train, validation (for choosing tau), calibration (for the
bundle's conformal and temperature calibration; never trained on) and test
parts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from mcdropout.errors import InputError
from mcdropout.stats.calibration import MIN_ROWS

NOISE_SCALE = (0.05, 0.1)  # heteroscedastic-1d: noise std = 0.05 + 0.1 * (x + 4)
TRAIN_RANGES = ((-4.0, -1.0), (1.0, 4.0))  # heteroscedastic-1d: the gap is (-1, 1)
SEQUENCE_LENGTH = 20
CALIBRATION_FRACTION = 0.15  # default share of the rows held out to calibrate on (recipes and own tables)
MIN_TRAINING_ROWS = 20
MIN_CALIBRATION_ROWS = MIN_ROWS


@dataclass
class Split:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    feature_names: list[str] | None = None
    output_names: list[str] | None = None
    class_names: list[str] | None = None
    record: dict = field(default_factory=dict)  # how the split was made, for the manifest
    x_calibration: np.ndarray | None = None  # held out to calibrate the bundle on; None: no calibration part
    y_calibration: np.ndarray | None = None

    def calibration_rows(self) -> tuple[np.ndarray, np.ndarray, str]:
        """The rows to calibrate on and where they come from: the calibration part, or, for a split made
        without one (bundles trained before recipes held one out), the validation part."""
        if self.x_calibration is not None:
            return (self.x_calibration, self.y_calibration,
                    f"the calibration part of the training split ({len(self.y_calibration)} rows, never trained on)")
        return self.x_val, self.y_val, f"the validation rows of the training split ({len(self.y_val)} rows)"


def partition(n: int, seed: int, test: float, val: float,
              calibration: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Row indices of the train, validation, calibration and test parts. The test part comes first in the
    seeded order and the calibration part next, so a split without a calibration part is the one bundles
    recorded before there was one."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = round(n * test)
    n_calibration = round(n * calibration)
    start = n_test + n_calibration
    n_val = round((n - start) * val)
    return order[start + n_val :], order[start : start + n_val], order[n_test:start], order[:n_test]


def check_parts(what: str, rows: int, train: int, test: int, calibration: int, fraction: float) -> None:
    """Refuse a split that leaves too few training rows, or a calibration part too small to calibrate on."""
    if train < MIN_TRAINING_ROWS:
        raise InputError(f"{what}: {train} training rows after holding out {test} for testing and {calibration} for"
                         f" calibration; at least {MIN_TRAINING_ROWS} are needed")
    if 0 < calibration < MIN_CALIBRATION_ROWS or (fraction > 0 and not calibration):
        raise InputError(f"--calibration-fraction {fraction} gives {calibration} calibration rows of {rows}; at least"
                         f" {MIN_CALIBRATION_ROWS} are needed (or 0 for no calibration)")


def _split(x, y, seed, source, test=0.2, val=0.2, calibration=None, **names) -> Split:
    """``calibration``: None makes no calibration part (a split recorded before there was one); 0 an empty one."""
    if not 0 <= val < 1:
        raise InputError(f"the validation fraction must lie in [0, 1), got {val}")
    if calibration is not None and not 0 <= calibration < 1 - test:
        raise InputError(f"the calibration fraction (--calibration-fraction) must lie in [0, {1 - test:g}) (0: no"
                         f" calibration; a fraction {test:g} of the rows is the test part), got {calibration}")
    train, valid, calibrate, held_out = partition(len(x), seed, test, val, calibration or 0.0)
    record = {"source": source, "rows": len(x), "split_seed": seed, "test_fraction": test,
              "validation_fraction_of_train": val, "train_rows": len(train), "validation_rows": len(valid),
              "test_rows": len(held_out)}
    parts = {}
    if calibration is not None:
        record.update({"calibration_fraction": calibration, "calibration_rows": len(calibrate)})
        parts = {"x_calibration": x[calibrate], "y_calibration": y[calibrate]}
    return Split(x[train], y[train], x[valid], y[valid], x[held_out], y[held_out], record=record, **parts, **names)


def diabetes(seed: int = 0, **fractions: float) -> Split:
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    return _split(data.data.astype(np.float32), data.target.astype(np.float32)[:, None], seed,
                  "sklearn.datasets.load_diabetes", feature_names=list(data.feature_names), **fractions,
                  output_names=["disease_progression"])


def breast_cancer(seed: int = 0, **fractions: float) -> Split:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    return _split(data.data.astype(np.float32), data.target.astype(np.int64), seed,
                  "sklearn.datasets.load_breast_cancer", **fractions,
                  feature_names=[str(n) for n in data.feature_names], class_names=[str(n) for n in data.target_names])


def digits(seed: int = 0, **fractions: float) -> Split:
    from sklearn.datasets import load_digits

    data = load_digits()
    images = data.images.astype(np.float32)[:, None]  # (n, 1, 8, 8), pixel values 0..16
    fractions.setdefault("val", 0.1)
    return _split(images, data.target.astype(np.int64), seed, "sklearn.datasets.load_digits", **fractions,
                  class_names=[str(c) for c in data.target_names])


def noise_std(x: np.ndarray) -> np.ndarray:
    """heteroscedastic-1d's true noise level: it grows with x."""
    return NOISE_SCALE[0] + NOISE_SCALE[1] * (x + 4.0)


def truth(x: np.ndarray) -> np.ndarray:
    """heteroscedastic-1d's noise-free function."""
    return np.sin(1.5 * x) + 0.3 * x


def heteroscedastic_1d(seed: int = 0, rows: int = 1000, **fractions: float) -> Split:
    """y = sin(1.5x) + 0.3x + noise whose std grows with x; inputs in [-4, -1] and [1, 4] only."""
    rng = np.random.default_rng(seed)
    side = rng.integers(0, 2, rows)
    low = np.array([r[0] for r in TRAIN_RANGES])[side]
    high = np.array([r[1] for r in TRAIN_RANGES])[side]
    x = rng.uniform(low, high)
    y = truth(x) + noise_std(x) * rng.standard_normal(rows)
    split = _split(x[:, None].astype(np.float32), y[:, None].astype(np.float32), seed, "generated", **fractions,
                   feature_names=["x"], output_names=["y"])
    split.record.update({"function": "sin(1.5x) + 0.3x", "noise_std": "0.05 + 0.1 (x + 4)",
                         "train_ranges": [list(r) for r in TRAIN_RANGES]})
    return split


def outside_inputs(points: int = 400) -> np.ndarray:
    """heteroscedastic-1d inputs away from the data: the gap (-0.8, 0.8) and beyond +-4.5."""
    gap = np.linspace(-0.8, 0.8, points // 2)
    beyond = np.concatenate([np.linspace(-7.0, -4.5, points // 4), np.linspace(4.5, 7.0, points // 4)])
    return np.concatenate([gap, beyond]).astype(np.float32)[:, None]


def sequence(seed: int = 0, rows: int = 3000, **fractions: float) -> Split:
    """Continue a noisy sine: 20 observed steps of A sin(w t + phase) + noise; predict step 21."""
    rng = np.random.default_rng(seed)
    amplitude = rng.uniform(0.5, 1.5, rows)
    frequency = rng.uniform(0.2, 0.6, rows)
    phase = rng.uniform(0, 2 * np.pi, rows)
    steps = np.arange(SEQUENCE_LENGTH + 1)
    clean = amplitude[:, None] * np.sin(frequency[:, None] * steps[None] + phase[:, None])
    noisy = clean + 0.1 * rng.standard_normal(clean.shape)
    x = noisy[:, :SEQUENCE_LENGTH, None].astype(np.float32)
    y = noisy[:, SEQUENCE_LENGTH:].astype(np.float32)
    split = _split(x, y, seed, "generated", **fractions, output_names=["next_value"])
    split.record.update({"process": "A sin(w t + phase) + N(0, 0.1^2), A~U(0.5,1.5), w~U(0.2,0.6)",
                         "length": SEQUENCE_LENGTH})
    return split


# reviews: one-line film reviews made from templates; a row's class is the polarity of its (last) judgement
REVIEW_SUBJECTS = ("the film", "the movie", "the plot", "the acting", "the ending", "the story", "the cast",
                   "the script", "the music", "this sequel")
REVIEW_VERBS = ("was", "is", "felt", "seemed")
REVIEW_DEGREES = ("", "really", "very", "truly", "quite", "so")
REVIEW_WORDS = {  # class index: adjectives of that polarity
    1: ("great", "wonderful", "brilliant", "fun", "moving", "charming", "superb", "clever", "beautiful", "fresh"),
    0: ("awful", "boring", "dull", "terrible", "weak", "bland", "clumsy", "tedious", "poor", "dreadful"),
}
REVIEW_CLASSES = ["negative", "positive"]
# Text unlike the reviews, by kind: other subjects, words the tokenizer never saw, the reviews' words without
# their grammar, and reviews cut short. The first of each kind is the playground's example of it.
REVIEW_OUTSIDE = {
    "other subjects": ("the stock market fell sharply on monday", "please reset my password before friday",
                       "photosynthesis converts light into chemical energy",
                       "quarterly earnings beat analyst expectations"),
    "unknown words": ("xyzzy plugh frobnicate", "lorem ipsum dolor sit amet"),
    "words without grammar": ("was the is felt so very and", "brilliant awful great dull", "not not not",
                              "but but the the"),
    "cut short": ("the film was", "i thought the plot"),
}


def _review(rng: np.random.Generator) -> tuple[str, int]:
    def clause(label: int) -> str:
        subject, verb = REVIEW_SUBJECTS[rng.integers(len(REVIEW_SUBJECTS))], REVIEW_VERBS[rng.integers(4)]
        degree = REVIEW_DEGREES[rng.integers(len(REVIEW_DEGREES))]
        negated = rng.random() < 0.2  # "not great" is negative, "not awful" positive
        words = REVIEW_WORDS[1 - label if negated else label]
        adjective = words[rng.integers(len(words))]
        return " ".join(w for w in (subject, verb, "not" if negated else "", degree, adjective) if w)

    label = int(rng.integers(2))
    kind = rng.random()
    if kind < 0.5:
        return clause(label), label
    if kind < 0.75:
        return f"i thought {clause(label)}", label
    return f"{clause(1 - label)} but {clause(label)}", label  # the judgement after "but" decides


def reviews(seed: int = 0, rows: int = 2000, **fractions: float) -> Split:
    """One-line film reviews made from templates ("the plot was not very clever"), labelled by polarity."""
    rng = np.random.default_rng(seed)
    made = [_review(rng) for _ in range(rows)]
    x = np.empty(rows, dtype=object)
    x[:] = [text for text, _ in made]
    y = np.asarray([label for _, label in made], dtype=np.int64)
    fractions.setdefault("val", 0.0)
    split = _split(x, y, seed, "generated", **fractions, class_names=list(REVIEW_CLASSES))
    split.record.update({"process": "templates: [i thought] SUBJECT VERB [not] [DEGREE] ADJECTIVE, or two such"
                         " clauses joined by 'but' (the second decides); 'not' flips the polarity",
                         "subjects": len(REVIEW_SUBJECTS), "adjectives": sum(map(len, REVIEW_WORDS.values()))})
    return split


def reviews_outside() -> np.ndarray:
    """Text unlike the reviews: other subjects, unknown words, and the reviews' own words without their grammar."""
    texts = [text for kind in REVIEW_OUTSIDE.values() for text in kind]
    x = np.empty(len(texts), dtype=object)
    x[:] = texts
    return x


LOADERS: dict[str, Callable[..., Split]] = {
    "diabetes": diabetes,
    "breast-cancer": breast_cancer,
    "digits": digits,
    "heteroscedastic-1d": heteroscedastic_1d,
    "sequence": sequence,
    "reviews": reviews,
}


def load(name: str, seed: int = 0, **fractions: float | None) -> Split:
    """Data set ``name`` split by ``seed``; ``fractions``: ``calibration`` (of all rows, as for own tables;
    None, the default: no calibration part) and ``val`` (of the rows left after the test and calibration
    parts)."""
    if name not in LOADERS:
        raise InputError(f"unknown data set {name!r}; known: {', '.join(LOADERS)}")
    return LOADERS[name](seed, **fractions)
