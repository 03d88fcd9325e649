"""OML's dataset CSV (`dataset=oml_csv`), the nearest thing to a standard for a shop's own catalog.

`df.csv` (dataset.files.csv): columns `label, path, split, is_query, is_gallery` and optionally
`category, x_1, y_1, x_2, y_2`, as open-metric-learning reads them. The `validation` rows are searched:
`is_query` rows against the `is_gallery` ones, a row that is both never retrieving itself; relevance is
the same `label` (the catalog's `product_id`); the level is `category` where given.
"""
from __future__ import annotations

import pandas as pd

from harness.data.published import Published

REQUIRED = ["label", "path", "split", "is_query", "is_gallery"]
TRUE, FALSE = {"true", "1", "1.0", "yes"}, {"false", "0", "0.0", "no", ""}


class OMLCsv(Published):
    name = "oml_csv"
    published_at = "https://open-metric-learning.readthedocs.io/en/latest/oml/data.html"
    files = {"csv": "df.csv"}

    def _table(self):
        path = self.path("csv")
        try:
            table = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise self.malformed(path, str(exc).splitlines()[0]) from None
        missing = [c for c in REQUIRED if c not in table]
        if missing:
            raise self.malformed(path, f"no column {missing[0]!r} (needs {', '.join(REQUIRED)})")
        flags = {}
        for column in ("is_query", "is_gallery"):
            values = table[column].str.strip().str.lower()
            bad = ~values.isin(TRUE | FALSE)
            if bad.any():
                raise self.malformed(path, f"{column} {table.loc[bad, column].iloc[0]!r} in row {int(bad.idxmax()) + 1}: not true/false")
            flags[column] = values.isin(TRUE)
        keep = (table["split"] == "validation") & (flags["is_query"] | flags["is_gallery"])
        if not keep.any():
            raise self.malformed(path, "no validation row is a query or in the gallery")
        query, gallery = flags["is_query"][keep], flags["is_gallery"][keep]
        table = table[keep].drop(columns=["split", "is_query", "is_gallery"])
        split = pd.Series("catalog", index=table.index).where(~query, "query").where(~(query & gallery), "both")
        if "category" not in table:
            table["category"] = ""
        return table.assign(item_id=table["path"], product_id=table["label"], split=split).reset_index(drop=True)
