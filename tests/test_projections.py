"""Projections learnt from the catalog: equal to scikit-learn, fitted on catalog rows only."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.decomposition import PCA
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from harness.data import Catalog
from harness.errors import HarnessError
from harness.evaluate import evaluate
from harness.evaluators import PrecisionAtK
from harness.metrics import Cosine
from harness.projections import FittedProjection, LDAProjection, PCAProjection
from harness.protocols import KFold


def clustered(n_labels=8, per_label=12, dim=20, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat([f"l{i}" for i in range(n_labels)], per_label)
    centres = rng.normal(size=(n_labels, dim))
    # label signal in a few directions, large noise in the others: what LDA is for
    emb = rng.normal(size=(len(labels), dim)) * 6.0
    emb[:, :4] = rng.normal(size=(len(labels), 4)) + 3.0 * centres[np.repeat(np.arange(n_labels), per_label), :4]
    return emb.astype(np.float32), labels


@pytest.mark.parametrize("ours,theirs", [
    (PCAProjection(dim=5), PCA(n_components=5, random_state=0)),
    (PCAProjection(dim=5, whiten=True), PCA(n_components=5, whiten=True, random_state=0)),
    (LDAProjection(shrinkage=0.1), LinearDiscriminantAnalysis(solver="eigen", shrinkage=0.1, n_components=7)),
    (LDAProjection(shrinkage="auto", dim=3), LinearDiscriminantAnalysis(solver="eigen", shrinkage="auto", n_components=3)),
])
def test_the_stage_is_scikit_learns_estimator(ours, theirs):
    emb, labels = clustered()
    labels = labels.copy()
    labels[0] = "alone"  # a label with one catalog image is left out of the fit
    fitted = ours.fit(emb, labels, Cosine(), 5)
    expected = theirs.fit(emb[1:].astype(np.float64), labels[1:]).transform(emb.astype(np.float64))
    np.testing.assert_allclose(fitted.transform(emb), expected, rtol=1e-4, atol=1e-4)
    assert fitted.info["fit_images"] == len(emb) - 1 and fitted.info["dim"] == expected.shape[1]


def test_fit_never_sees_a_query_or_a_distractor():
    emb, labels = clustered()
    table = pd.DataFrame({"path": [f"/i/{i}.jpg" for i in range(len(labels) + 6)],
                          "label": list(labels) + ["junk"] * 6, "distractor": [False] * len(labels) + [True] * 6})
    catalog = Catalog.from_table(table, ["label"], "t")
    catalog, folds = KFold(folds=3).split(catalog)
    emb = np.vstack([emb, np.random.default_rng(1).normal(size=(6, emb.shape[1]))]).astype(np.float32)
    lda = LDAProjection(shrinkage="cv", grid=[0.01, 0.3, "auto"])
    first = evaluate(emb, catalog, folds, Cosine(), [PrecisionAtK()], 3, projection=lda)
    for number, fold in enumerate(folds):
        changed = emb.copy()
        changed[fold.query_idx] = np.random.default_rng(2).normal(size=(len(fold.query_idx), emb.shape[1])) * 50
        changed[catalog.is_distractor] *= -7
        again = evaluate(changed, catalog, folds, Cosine(), [PrecisionAtK()], 3, projection=lda).projections[number]
        np.testing.assert_array_equal(again.weight, first.projections[number].weight)
        np.testing.assert_array_equal(again.bias, first.projections[number].bias)
        assert again.info["shrinkage"] == first.projections[number].info["shrinkage"]
    per_fold = first.per_fold
    assert all(m["projection_dim"] == 7 for m in per_fold) and "projection_shrinkage_mean" in first.metrics


def test_lda_helps_the_labels_it_learns_from():
    emb, labels = clustered(per_label=16)
    catalog, folds = KFold(folds=4).split(Catalog.from_table(
        pd.DataFrame({"path": [f"/i/{i}.jpg" for i in range(len(labels))], "label": labels}), ["label"], "t"))
    plain = evaluate(emb, catalog, folds, Cosine(), [PrecisionAtK()], 5)
    lda = evaluate(emb, catalog, folds, Cosine(), [PrecisionAtK()], 5, projection=LDAProjection(shrinkage=0.1))
    assert lda.metrics["label_precision_at_5"] > plain.metrics["label_precision_at_5"] + 0.1


def test_saved_projection_is_two_arrays(tmp_path):
    emb, labels = clustered()
    fitted = LDAProjection(shrinkage=0.1).fit(emb, labels, Cosine(), 5)
    fitted.save(tmp_path / "p.npz")
    with np.load(tmp_path / "p.npz", allow_pickle=False) as arrays:
        assert sorted(arrays.files) == ["bias", "weight"]
    np.testing.assert_array_equal(FittedProjection.load(tmp_path / "p.npz").transform(emb), fitted.transform(emb))


def test_bad_projection_settings_are_clear():
    with pytest.raises(HarnessError, match="projection.shrinkage"):
        LDAProjection(shrinkage="often")
    with pytest.raises(HarnessError, match="projection.dim"):
        PCAProjection(dim=0)
    with pytest.raises(HarnessError, match="at least two labels"):
        LDAProjection(shrinkage=0.1).fit(np.ones((4, 3)), np.array(["a", "b", "c", "d"]), Cosine(), 1)
