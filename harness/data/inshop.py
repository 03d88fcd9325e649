"""DeepFashion In-shop Clothes Retrieval (`dataset=inshop`): query photos against the gallery, by item.

`Eval/list_eval_partition.txt`: a count line, the header `image_name item_id evaluation_status`, then
one row per photo, status train / query / gallery (train photos are left out). Relevance is the same
`item_id` (the catalog's `product_id`); levels from the path, img/<gender>/<type>/<item>/<photo>.jpg.
Boxes (`Anno/list_bbox_inshop.txt`, `x_1 y_1 x_2 y_2`) are read when the file is there; `preprocess.crop=bbox`
crops to them.
"""
from __future__ import annotations

from harness.data.published import Published, path_parts

STATUS = {"query": "query", "gallery": "catalog"}


class InShop(Published):
    name = "inshop"
    published_at = "https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/InShopRetrieval.html"
    files = {"partition": "Eval/list_eval_partition.txt", "boxes": "Anno/list_bbox_inshop.txt"}

    def _table(self):
        table = self.listing("partition", ["image_name", "item_id", "evaluation_status"], counted=True)
        unknown = set(table["evaluation_status"]) - {"train", *STATUS}
        if unknown:
            raise self.malformed(self.path("partition"), f"evaluation_status {sorted(unknown)[0]!r}: not train, query or gallery")
        table = table[table["evaluation_status"] != "train"]
        out = table.rename(columns={"image_name": "path", "item_id": "product_id"}).assign(
            item_id=table["image_name"], split=table["evaluation_status"].map(STATUS),
            category=path_parts(table["image_name"], 1), subcategory=path_parts(table["image_name"], 2))
        if self.exists("boxes"):
            boxes = self.listing("boxes", ["image_name", "clothes_type", "pose_type", "x_1", "y_1", "x_2", "y_2"], counted=True)
            out = out.merge(boxes[["image_name", "x_1", "y_1", "x_2", "y_2"]].rename(columns={"image_name": "path"}),
                            on="path", how="left")
        return out.drop(columns="evaluation_status").reset_index(drop=True)

