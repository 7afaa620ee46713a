"""One declaration of the answer's statistics: every surface is derived from mcdropout.answer.STATISTICS."""

import numpy as np

from mcdropout.answer import STATISTICS, ClassificationResult, RegressionResult, statistics
from service import schemas
from service.codecs import v2


def test_every_statistic_is_in_the_v1_schema_and_the_v2_outputs():
    regression = set(schemas.RegressionResponse.model_fields) | set(schemas.Interval.model_fields)
    classification = set(schemas.ClassificationResponse.model_fields)
    for stat in STATISTICS:
        fields = {"regression": regression, "classification": classification,
                  "both": regression & classification}[stat.task]
        assert stat.name in fields, stat.name
        for task in ("regression", "classification") if stat.task == "both" else (stat.task,):
            assert (stat.name in {s.name for s in v2.OUTPUTS[task]}) == stat.tensor, stat.name
    assert schemas.ClassificationResponse.model_fields["mutual_information"].description.endswith("(nats)")


def test_result_objects_and_columns_follow_the_declarations():
    rows = 3
    regression = RegressionResult(model="m", version="1", seed=0, outputs=["y"], level=0.9,
                                  **{s.name: np.zeros((rows, 1)) if s.shape == "outputs" else np.full(rows, 5)
                                     for s in statistics("regression") if not s.optional})
    assert list(regression.columns()) == [s.name for s in statistics("regression") if s.column and not s.optional]
    values = {"probs": np.full((rows, 2), 0.5), "label": np.zeros(rows, dtype=int),
              "class_name": np.asarray(["a"] * rows, dtype=object)}
    classification = ClassificationResult(model="m", version="1", seed=0, classes=["a", "b"],
                                          **{s.name: values.get(s.name, np.zeros(rows)) for s in statistics("classification")
                                             if not s.optional})
    assert list(classification.columns()) == ["label", "class_name", "prob_a", "prob_b", "entropy", "expected_entropy",
                                              "mutual_information", "variation_ratio", "samples_used"]
