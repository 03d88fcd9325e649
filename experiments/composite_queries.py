"""A cross-domain query set made here: studio products pasted onto cluttered photos, each naming its product.

    python experiments/composite_queries.py                     # 300 queries in /tmp/fashion-composite
    python -m harness dataset=products dataset.root=../shared/data/fashion-products \\
        protocol=queries protocol.root=/tmp/fashion-composite evaluator=product preprocess=segment

Each query is one catalog photo's product (`harness.data.composite`: cut out of its studio background)
on one of the 360 distractor photos (a room, a car, a phone), its height 45-85 % of the photo's, placed
anywhere, with up to 30 % of its box covered by a patch of another distractor photo from one side. The
manifest gives each query its catalog product (`product_id` = the catalog photo's `item_id`: same-product
Recall@k with `evaluator=product`), its labels (category P@5), the pasted box (`x_1 … y_2`, exact: with
`preprocess.crop=bbox` an oracle crop), the covered share and the scene. Seeded: the same seed writes
the same photos and the same ground truth. Written outside the repository.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from harness.data.composite import composite

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"


def write(catalog: Path, scenes: Path, out: Path, n: int, seed: int, quality: int = 90) -> pd.DataFrame:
    products = pd.read_csv(catalog / "manifest.csv", dtype=str, keep_default_na=False)
    backgrounds = pd.read_csv(scenes / "manifest.csv", dtype=str, keep_default_na=False)
    rng = np.random.default_rng(seed)
    chosen = products.iloc[np.sort(rng.choice(len(products), size=min(n, len(products)), replace=False))]
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for _, item in chosen.iterrows():
        scene, occluder = backgrounds["path"].iloc[rng.choice(len(backgrounds), size=2, replace=False)]
        with Image.open(catalog / item["path"]) as product, Image.open(scenes / scene) as a, Image.open(scenes / occluder) as b:
            made = composite(product.convert("RGB"), a, b, rng)
        name = f"images/{item['item_id']}.jpg"
        made.image.save(out / name, "JPEG", quality=quality)
        rows.append({"path": name, "category": item["category"], "subcategory": item["subcategory"],
                     "article_type": item.get("article_type", ""), "product_id": item["item_id"],
                     **dict(zip(("x_1", "y_1", "x_2", "y_2"), made.box)), "occluded": round(made.occluded, 4),
                     "scene": scene})
    table = pd.DataFrame(rows)
    table.to_csv(out / "manifest.csv", index=False)
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", type=Path, default=SHARED / "fashion-products")
    parser.add_argument("--scenes", type=Path, default=SHARED / "distractors")
    parser.add_argument("--out", type=Path, default=Path("/tmp/fashion-composite"))
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    table = write(args.catalog, args.scenes, args.out, args.n, args.seed)
    print(f"{len(table)} queries in {args.out} (covered share: mean {table['occluded'].mean():.3f})")


if __name__ == "__main__":
    main()
