"""The MLflow pyfunc model, logged as models-from-code: this file is the model's code.

Input: a DataFrame with an `image` column of base64 JPEG/PNG strings (never file names), or a list of
them. Params: k, within_category, rerank_column, rerank_weight. Output: one row per (query, rank)
with item_id, labels, image (path relative to the catalog root), distance and similarity.
"""
from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

from harness.data.images import BadImage
from harness.serving.searcher import Searcher


class VisualSearchModel(PythonModel):
    def load_context(self, context):
        self.searcher = Searcher.load(context.artifacts["searcher"])

    def predict(self, context, model_input, params=None):
        params = params or {}
        if isinstance(model_input, pd.DataFrame):
            if "image" not in model_input:
                raise MlflowException("the request needs a column named 'image'", INVALID_PARAMETER_VALUE)
            images = list(model_input["image"])
        else:
            images = list(model_input)
        try:
            tables = self.searcher.search(
                images, k=params.get("k"), within_category=bool(params.get("within_category", False)),
                rerank_column=params.get("rerank_column") or None, rerank_weight=float(params.get("rerank_weight", 0.0)))
        except (BadImage, KeyError) as exc:
            raise MlflowException(f"bad input: {exc}", INVALID_PARAMETER_VALUE) from None
        return pd.concat([t.assign(query=i) for i, t in enumerate(tables)], ignore_index=True)


mlflow.models.set_model(VisualSearchModel())
