"""Stanford Online Products (`dataset=sop`): all-versus-all on the test split, by product class.

`Ebay_test.txt` (and `Ebay_train.txt`, not searched): the header `image_id class_id super_class_id
path`, one row per photo. Every test photo is a query against all the others (`split=both`; never
itself); relevance is the same `class_id` (the catalog's `product_id`); the level is the super-class,
named by the photo's folder (bicycle_final/… → bicycle).
"""
from __future__ import annotations

from harness.data.published import Published, path_parts


class StanfordOnlineProducts(Published):
    name = "sop"
    published_at = "https://cvgl.stanford.edu/projects/lifted_struct/"
    files = {"test": "Ebay_test.txt", "train": "Ebay_train.txt"}

    def _table(self):
        table = self.listing("test", ["image_id", "class_id", "super_class_id", "path"], counted=False)
        return table.assign(item_id=table["image_id"], product_id=table["class_id"], split="both",
                            category=path_parts(table["path"], 0).str.removesuffix("_final"))
