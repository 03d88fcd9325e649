"""A copy of the shared products manifest with a `product_id` column, written outside the repository.

    python experiments/product_catalog.py                 # /tmp/fashion-products-grouped
    python -m harness dataset=products dataset.root=/tmp/fashion-products-grouped evaluator=product protocol=kfold

The shared set has one photo per item, but its near-duplicate groups (`near_dup_group`, else
`exact_dup_group`) are photos of one product: they become the product, every other item its own.
The images are not copied: `images/` is a symbolic link to the shared set's.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = ROOT.parent / "shared" / "data" / "fashion-products"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=Path("/tmp/fashion-products-grouped"))
    args = parser.parse_args(argv)
    source, out = args.source.resolve(), args.out.resolve()
    if out == source or ROOT in out.parents:
        raise SystemExit(f"--out {out}: outside the shared set and the repository, please")
    manifest = pd.read_csv(source / "manifest.csv", dtype=str, keep_default_na=False)
    group = manifest["near_dup_group"].where(manifest["near_dup_group"] != "", manifest["exact_dup_group"])
    manifest["product_id"] = group.where(group != "", manifest["item_id"])
    out.mkdir(parents=True, exist_ok=True)
    link = out / "images"
    if not link.exists():
        link.symlink_to(source / "images", target_is_directory=True)
    manifest.to_csv(out / "manifest.csv", index=False)
    photos = manifest["product_id"].map(manifest["product_id"].value_counts())
    print(f"{out}: {len(manifest)} photos, {int((photos > 1).sum())} of them in "
          f"{manifest.loc[photos > 1, 'product_id'].nunique()} products with several photos")


if __name__ == "__main__":
    main()
