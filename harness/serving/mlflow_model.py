"""The MLflow pyfunc model, logged as models-from-code: this file is the model's code.

Input: a DataFrame with an `image` column of base64 JPEG/PNG strings (never file names) and/or a `text`
column (words, for a backbone with a text tower): each row is one query, a photo or words. Params: k,
within_category, rerank_column, rerank_weight, filters (a JSON object: harness.serving.filters). Output: one row per (query, rank) with item_id, labels,
image (path relative to the catalog root), distance and similarity.
"""
from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

from harness.data.images import BadImage
from harness.serving.searcher import SearchOptions, Searcher


class VisualSearchModel(PythonModel):
    def load_context(self, context):
        self.searcher = Searcher.load(context.artifacts["searcher"])

    def predict(self, context, model_input, params=None):
        params = params or {}
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame({"image": list(model_input)})
        if "image" not in frame and "text" not in frame:
            raise MlflowException("the request needs a column named 'image' (base64) or 'text'", INVALID_PARAMETER_VALUE)
        tables = []
        try:
            # Bounds first: a request for 10^9 answers or 10^6 rows is refused before anything is decoded.
            options = SearchOptions.parse(self.searcher, params).kwargs()
            self.searcher.check_rows(len(frame))
            for row in range(len(frame)):
                text = frame["text"].iloc[row] if "text" in frame else None
                image = frame["image"].iloc[row] if "image" in frame else None
                if isinstance(text, str) and text.strip():
                    tables += self.searcher.search_text([text], **options)
                elif image is not None and not (isinstance(image, float) and pd.isna(image)):
                    tables += self.searcher.search([image], **options)
                else:
                    raise BadImage(f"row {row} has neither an image nor a text")
        except BadImage as exc:
            raise MlflowException(f"bad input: {exc}", INVALID_PARAMETER_VALUE) from None
        return pd.concat([t.assign(query=i) for i, t in enumerate(tables)], ignore_index=True)


mlflow.models.set_model(VisualSearchModel())
