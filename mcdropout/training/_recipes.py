"""How each shipped model in ``models/`` is trained: ``mcdropout train NAME``.

A recipe fixes the data set and its split, the architecture, the loss and the
optimiser settings. Training standardises inputs (per feature for tables, one
scale for images and sequences) and regression targets on the training part,
fits the network with dropout on, picks tau by MC log-likelihood on the
validation part where the model has a homoscedastic head, calibrates on a
calibration part it never trained on nor chose anything with, evaluates on the
test part and writes a bundle whose manifest records all of it.
"""

from __future__ import annotations

import dataclasses
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mcdropout.bundle import architectures, fit_bundle
from mcdropout.training import _baseline as baseline
from mcdropout.training import _evaluation as evaluation
from mcdropout.training import _fit as training
from mcdropout.training import datasets
from mcdropout.bundle import Bundle, Manifest, Standardisation, save_bundle
from mcdropout.errors import BundleError, InputError


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    dataset: str
    architecture: str
    config: dict
    loss: str
    epochs: int
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    samples: int = 100
    per_feature: bool = True  # standardise each feature (tables) or all values at once (images, sequences)
    fit_tau: bool = False
    validation: float = 0.0  # of the rows outside the test and calibration parts: they choose tau (fit_tau)
    split_seed: int = 0
    extra: dict = field(default_factory=dict)


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        Recipe(
            name="diabetes",
            description="Disease progression one year after baseline, from 10 clinical features"
            " (scikit-learn's diabetes data); MLP with homoscedastic noise tau.",
            dataset="diabetes", architecture="mlp", config={"hidden": [50], "dropout": 0.1},
            loss="mse", epochs=150, weight_decay=1e-3, fit_tau=True, validation=0.2,
        ),
        Recipe(
            name="heteroscedastic-1d",
            description="A generated 1-D problem whose noise grows with x and whose training inputs have a gap"
            " in (-1, 1): aleatoric variance follows the noise, epistemic variance rises away from the data.",
            dataset="heteroscedastic-1d", architecture="heteroscedastic-mlp",
            config={"hidden": [128, 128], "dropout": 0.05}, loss="gaussian_nll", epochs=300, lr=3e-3,
            weight_decay=1e-5,
        ),
        Recipe(
            name="digits",
            description="Handwritten digits, 8x8 grey images (scikit-learn's digits data); small CNN with"
            " Dropout2d.",
            dataset="digits", architecture="cnn", config={"channels": [32, 64], "hidden": 128, "dropout": 0.25},
            loss="cross_entropy", epochs=40, per_feature=False,
        ),
        Recipe(
            name="breast-cancer",
            description="Malignant or benign tumour from 30 features of a cell-nucleus image (scikit-learn's"
            " breast cancer data); MLP classifier.",
            dataset="breast-cancer", architecture="mlp", config={"hidden": [64], "dropout": 0.2},
            loss="cross_entropy", epochs=100,
        ),
        Recipe(
            name="sequence",
            description="Continue a noisy sine wave: the next value after 20 observed steps; LSTM with"
            " LockedDropout (one mask per sequence) and noise tau.",
            dataset="sequence", architecture="lstm", config={"hidden": 64, "dropout": 0.1},
            loss="mse", epochs=150, lr=3e-3, per_feature=False, fit_tau=True, validation=0.2, batch_size=64,
        ),
        Recipe(
            name="reviews",
            description="Is a one-line film review positive or negative? Reviews made from templates; a small"
            " transformer encoder (BERT's shape) with hidden and attention dropout, text in.",
            dataset="reviews", architecture="text-transformer",
            config={"hidden": 64, "layers": 2, "heads": 4, "ffn": 128, "dropout": 0.2, "attention_dropout": 0.1},
            loss="cross_entropy", epochs=16, lr=3e-3, batch_size=64, samples=20, per_feature=False,
            extra={"text": True, "max_length": 16},
        ),
    ]
}


def train(name: str, *, seed: int = 0, out: str | Path | None = None, epochs: int | None = None,
          calibration_fraction: float = datasets.CALIBRATION_FRACTION, quiet: bool = False,
          overwrite: bool = False) -> tuple[Path, dict]:
    """Train shipped model ``name`` and write its bundle (default ``models/NAME``); returns (path, metrics).

    ``calibration_fraction`` of the data set's rows are held out and the bundle is calibrated on them; 0 writes
    an uncalibrated bundle. An existing folder is replaced only with ``overwrite``.
    """
    if name not in RECIPES:
        raise InputError(f"unknown model {name!r}; shipped models: {', '.join(RECIPES)}")
    folder = destination(out, name, overwrite)
    recipe = RECIPES[name]
    started = time.perf_counter()
    torch.manual_seed(seed)
    split = datasets.load(recipe.dataset, seed=recipe.split_seed, val=recipe.validation,
                          calibration=calibration_fraction)
    datasets.check_parts(name, split.record["rows"], len(split.y_train), len(split.y_test), len(split.y_calibration),
                         calibration_fraction)
    if recipe.extra.get("text"):  # text in: its own tokenizer and bundle (mcdropout.training._text)
        from mcdropout.training import _text

        return _text.train(recipe, split, folder, seed=seed, quiet=quiet, started=started, calibrated=calibrated,
                           epochs=recipe.epochs if epochs is None else epochs)
    classifier = recipe.loss == "cross_entropy"
    axis = 0 if recipe.per_feature else tuple(range(split.x_train.ndim))
    x_mean, x_std = training.standardisation(split.x_train, axis)
    x_scaler = Standardisation(x_mean, x_std)
    y_scaler = None if classifier else Standardisation(*training.standardisation(split.y_train, 0))

    def scale_x(values: np.ndarray) -> np.ndarray:
        return x_scaler.forward(torch.from_numpy(values)).numpy()

    def scale_y(values: np.ndarray) -> np.ndarray:
        return values if y_scaler is None else y_scaler.forward(torch.from_numpy(values)).numpy()

    config = {**_shape_config(recipe, split), **recipe.config}
    model = architectures.build(recipe.architecture, config)
    epochs = recipe.epochs if epochs is None else epochs
    history = training.fit(
        model, scale_x(split.x_train), scale_y(split.y_train), loss=recipe.loss, epochs=epochs,
        batch_size=recipe.batch_size, lr=recipe.lr, weight_decay=recipe.weight_decay, seed=seed,
        description=f"training {name}", quiet=quiet,
    )
    manifest = Manifest(
        name=name,
        description=recipe.description,
        task="classification" if classifier else "regression",
        architecture=recipe.architecture,
        config=config,
        input_shape=list(split.x_train.shape[1:]),
        feature_names=split.feature_names,
        output_names=split.output_names,
        class_names=split.class_names,
        input_standardisation=x_scaler,
        target_standardisation=y_scaler,
        samples=recipe.samples,
        dropout=recipe.config.get("dropout"),
    )
    tau = None
    if recipe.fit_tau:
        draft = Bundle(dataclasses.replace(manifest, tau=1.0), model, device="cpu")
        val = draft.predict(split.x_val, seed=seed, samples=recipe.samples, return_samples=True)
        samples = val.samples.numpy()  # (rows, T, outputs) in the user's units
        tau_user = training.fit_tau(samples, split.y_val)
        tau = tau_user * float(np.mean(y_scaler.std)) ** 2  # precision in standardised units
    record = {
        "data": {"name": recipe.dataset, **split.record},
        "seed": seed,
        "epochs": epochs,
        "batch_size": recipe.batch_size,
        "optimizer": {"name": "adam", "lr": recipe.lr, "weight_decay": recipe.weight_decay},
        "loss": recipe.loss,
        "final_loss": history[-1],
        "tau_selection": "max MC log-likelihood on the validation part" if recipe.fit_tau else None,
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
    }
    manifest = dataclasses.replace(manifest, tau=tau, training=record)
    bundle = Bundle(manifest, model, device="cpu")
    if len(split.y_calibration):
        manifest = calibrated(bundle, split, seed=seed)
    else:
        manifest = dataclasses.replace(manifest, metrics=evaluation.evaluate(bundle, split, seed=seed))
    metrics = dict(manifest.metrics)
    compared = baseline.compare(manifest.task, split, metrics)
    if compared is not None:
        metrics["baseline"] = compared
    record["wall_time_s"] = round(time.perf_counter() - started, 2)
    path = save_bundle(model, folder, dataclasses.replace(manifest, metrics=metrics))
    return path, metrics


def destination(out: str | Path | None, name: str, overwrite: bool) -> Path:
    """The bundle folder training writes (``out``, default ``models/NAME``), checked before training starts: one
    that exists is replaced only with ``overwrite`` (``--overwrite``), as ``bundle create`` and ``score`` do."""
    folder = Path(out) if out is not None else Path("models") / name
    if (folder.exists() or folder.is_symlink()) and not overwrite:
        raise BundleError(f"{folder} exists; give --overwrite to replace it")
    return folder


def calibrated(bundle: Bundle, split: datasets.Split, *, seed: int = 0, source: str | None = None) -> Manifest:
    """``bundle``'s manifest calibrated on the split's calibration rows (which it never trained on), with the
    held-out metrics of the calibrated bundle, and the uncalibrated ones beside them under ``uncalibrated``."""
    raw = dataclasses.replace(bundle.manifest, calibration=None)
    before = evaluation.evaluate(Bundle(raw, bundle.model, device="cpu", text=bundle.text), split, seed=seed)
    x, y, described = split.calibration_rows()
    fitted = fit_bundle(Bundle(raw, bundle.model, device="cpu", text=bundle.text), x, y, seed=seed,
                        source=source or described)
    manifest = dataclasses.replace(raw, calibration=fitted)
    metrics = evaluation.calibrated_metrics(Bundle(manifest, bundle.model, device="cpu", text=bundle.text), split,
                                            before, seed=seed)
    return dataclasses.replace(manifest, metrics=metrics)


def _shape_config(recipe: Recipe, split: datasets.Split) -> dict:
    shape = split.x_train.shape[1:]
    classes = len(split.class_names) if split.class_names else None
    if recipe.architecture == "cnn":
        return {"in_channels": shape[0], "height": shape[1], "width": shape[2], "classes": classes}
    if recipe.architecture == "lstm":
        return {"in_features": shape[-1], "out_features": split.y_train.shape[1]}
    return {"in_features": shape[0], "out_features": classes or split.y_train.shape[1]}
