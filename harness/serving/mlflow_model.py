"""The MLflow pyfunc model, logged as models-from-code: this file is the model's code.

Input: a DataFrame with an `image` column of base64 JPEG/PNG strings (never file names), a `text` column
(words, for a backbone with a text tower) and/or a `terms` column (a JSON list of weighted photos and
words, harness.serving.products): each row is one query. Params: k, within_category, rerank_column,
rerank_weight, filters (a JSON object: harness.serving.filters), collapse_duplicates, items (one answer
list per product the photo shows), point ("x,y": only the item there). Output: one row per (query,
rank) with item_id, labels, image (path relative to the catalog root), distance and similarity: k
distinct products; with items or point, also `item` and `item_box` (its box in the photo's pixels).
"""
from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

from harness.data.images import BadImage
from harness.serving.products import parse_terms
from harness.serving.searcher import SearchOptions, Searcher


class VisualSearchModel(PythonModel):
    def load_context(self, context):
        self.searcher = Searcher.load(context.artifacts["searcher"])

    def predict(self, context, model_input, params=None):
        params = params or {}
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame({"image": list(model_input)})
        if not {"image", "text", "terms"} & set(frame):
            raise MlflowException("the request needs a column named 'image' (base64), 'text' or 'terms'",
                                  INVALID_PARAMETER_VALUE)
        tables = []
        try:
            # Bounds first: a request for 10^9 answers or 10^6 rows is refused before anything is decoded.
            parsed = SearchOptions.parse(self.searcher, params)
            options = parsed.kwargs()
            self.searcher.check_rows(len(frame))
            terms = [parse_terms(t, self.searcher.settings.max_rows) if present(t) else None
                     for t in (frame["terms"] if "terms" in frame else [None] * len(frame))]
            # every photo and text of the request counts, whichever row holds it
            self.searcher.check_rows(sum(len(t) if t else 1 for t in terms))
            for row in range(len(frame)):
                text, image = (frame[c].iloc[row] if c in frame else None for c in ("text", "image"))
                if terms[row]:
                    tables.append(self.searcher.search_terms(terms[row], **options))
                elif isinstance(text, str) and text.strip():
                    tables += self.searcher.search_text([text], **options)
                elif present(image) and (parsed.items or parsed.clicked):
                    tables += self.searcher.search_items(image, point=parsed.clicked, **options)
                elif present(image):
                    tables += self.searcher.search([image], **options)
                else:
                    raise BadImage(f"row {row} has neither an image nor a text")
        except BadImage as exc:
            raise MlflowException(f"bad input: {exc}", INVALID_PARAMETER_VALUE) from None
        return pd.concat([t.assign(query=i) for i, t in enumerate(tables)], ignore_index=True)


def present(value) -> bool:
    return value is not None and not (isinstance(value, float) and pd.isna(value))


mlflow.models.set_model(VisualSearchModel())
