"""DeepFashion Consumer-to-Shop Clothes Retrieval (`dataset=consumer2shop`): shoppers' photos against
the shop's, by item.

`Eval/list_eval_partition.txt`: a count line, the header `image_pair_name_1 image_pair_name_2 item_id
evaluation_status`, one row per (consumer photo, shop photo) pair, status train / val / test. The
queries are the consumer photos of the test pairs; the gallery, the shop photos of the val and test
pairs (each once); relevance is the same `item_id` (the catalog's `product_id`). Levels from the path,
img/<group>/<type>/<item>/<photo>.jpg.
"""
from __future__ import annotations

import pandas as pd

from harness.data.published import Published, path_parts


class ConsumerToShop(Published):
    name = "consumer2shop"
    published_at = "https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/Consumer2ShopRetrieval.html"
    files = {"partition": "Eval/list_eval_partition.txt"}

    def _table(self):
        pairs = self.listing("partition", ["image_pair_name_1", "image_pair_name_2", "item_id", "evaluation_status"],
                             counted=True)
        unknown = set(pairs["evaluation_status"]) - {"train", "val", "test"}
        if unknown:
            raise self.malformed(self.path("partition"), f"evaluation_status {sorted(unknown)[0]!r}: not train, val or test")
        queries = pairs.loc[pairs["evaluation_status"] == "test", ["image_pair_name_1", "item_id"]].assign(split="query")
        gallery = pairs.loc[pairs["evaluation_status"].isin(["val", "test"]), ["image_pair_name_2", "item_id"]].assign(split="catalog")
        table = pd.concat([queries.rename(columns={"image_pair_name_1": "path"}),
                           gallery.rename(columns={"image_pair_name_2": "path"})], ignore_index=True)
        table = table.drop_duplicates("path", keep="first").rename(columns={"item_id": "product_id"})
        both = set(queries["image_pair_name_1"]) & set(gallery["image_pair_name_2"])
        if both:
            raise self.malformed(self.path("partition"), f"{sorted(both)[0]} is both a consumer and a shop photo")
        return table.assign(item_id=table["path"], category=path_parts(table["path"], 1),
                            subcategory=path_parts(table["path"], 2)).reset_index(drop=True)
