"""Every bundle in models/ loads, has a valid manifest, and keeps the bars its issue sets."""

import json
from pathlib import Path

import pytest

import mcdropout as mcd
from mcdropout.training import _evaluation as evaluation
from mcdropout.bundle import Manifest
from mcdropout.training._recipes import RECIPES, train

MODELS = Path(__file__).resolve().parent.parent / "models"
SHIPPED = sorted(p.name for p in MODELS.iterdir() if p.is_dir())


def test_every_recipe_is_shipped():
    assert SHIPPED == sorted(RECIPES)


@pytest.mark.parametrize("name", SHIPPED)
def test_bundle_loads_with_a_valid_manifest(name):
    folder = MODELS / name
    data = json.loads((folder / "manifest.json").read_text())
    manifest = Manifest.from_dict(data)
    assert manifest.name == name
    assert manifest.training["data"]["name"] and manifest.training["wall_time_s"] < 180
    assert sum(f.stat().st_size for f in folder.iterdir()) < 5_000_000
    bundle = mcd.load_bundle(folder, device="cpu")
    assert bundle.manifest == manifest


@pytest.mark.parametrize("name", SHIPPED)
def test_recorded_metrics_are_what_evaluation_gives(name):
    """The manifest's numbers are reproducible: evaluating again gives them to 3 significant digits."""
    bundle = mcd.load_bundle(MODELS / name, device="cpu")
    recorded = bundle.manifest.metrics
    fresh = evaluation.evaluate(bundle, seed=recorded["seed"])
    for part in ("mc", "deterministic"):
        _assert_same_numbers(fresh[part], recorded[part])


@pytest.mark.parametrize("name", [n for n in SHIPPED if RECIPES[n].loss != "cross_entropy"])
def test_regression_intervals_cover(name):
    metrics = json.loads((MODELS / name / "manifest.json").read_text())["metrics"]
    assert 0.90 <= metrics["mc"]["coverage_95"] <= 0.99
    assert metrics["mc_wins_nll"] or metrics["why_mc_does_not_win_nll"]


def test_digits_accuracy_calibration_and_ood():
    metrics = mcd.load_bundle(MODELS / "digits").manifest.metrics
    assert metrics["mc"]["accuracy"] >= 0.97
    assert metrics["mc"]["ece"] <= 0.03
    assert metrics["ood"]["uniform_noise"]["auroc_mutual_information"] >= 0.90


def test_heteroscedastic_1d_separates_the_two_kinds_of_uncertainty():
    metrics = mcd.load_bundle(MODELS / "heteroscedastic-1d").manifest.metrics
    assert metrics["aleatoric_vs_true_noise"]["correlation"] > 0.95  # aleatoric follows the noise
    ood = metrics["ood"]
    assert ood["mean_epistemic_std_outside"] > 2 * ood["mean_epistemic_std_inside"]  # epistemic rises off the data
    assert ood["auroc_epistemic_std"] > 0.9


def test_retraining_reproduces_the_shipped_numbers(tmp_path):
    """Same recipe, same seed: the same metrics to 3 significant digits (the issue's reproducibility bar)."""
    shipped = mcd.load_bundle(MODELS / "diabetes").manifest
    _, metrics = train("diabetes", seed=shipped.training["seed"], out=tmp_path / "diabetes", quiet=True)
    _assert_same_numbers(metrics["mc"], shipped.metrics["mc"])


def _assert_same_numbers(fresh: dict, recorded: dict) -> None:
    """Numbers equal to 3 significant digits; other values (None: no conformal interval at that level) equal."""
    for key, value in recorded.items():
        expected = pytest.approx(value, rel=1e-3, abs=1e-9) if isinstance(value, float) else value
        assert fresh[key] == expected, key
