"""A catalog-resolution copy of the shared products set, written outside the repository.

    python experiments/make_large_catalog.py                       # 1080 x 1440 JPEGs in /tmp/fashion-products-1080x1440
    python experiments/make_large_catalog.py --size 1500x2000 --out /data/products-3mp

The shared set's photos are 225 x 300 thumbnails; shops serve 1-3 MP photos. Each image is resized
with Lanczos to the target size and re-encoded as a baseline JPEG (quality 90, 4:2:0, as catalog
pipelines write them); `manifest.csv` is copied with `width` and `height` updated, so
`dataset=products dataset.root=OUT` reads the copy with the same labels and item ids.
"""
from __future__ import annotations

import argparse
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = ROOT.parent / "shared" / "data" / "fashion-products"


def enlarge(job: tuple[str, str, int, int, int]) -> None:
    src, dst, width, height, quality = job
    with Image.open(src) as img:
        img.convert("RGB").resize((width, height), Image.LANCZOS).save(dst, "JPEG", quality=quality, subsampling=2)


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--size", default="1080x1440", help="WIDTHxHEIGHT of every copy")
    parser.add_argument("--out", type=Path, default=None, help="default: /tmp/fashion-products-<size>")
    parser.add_argument("--quality", type=int, default=90)
    parser.add_argument("--limit", type=int, default=None, help="only the first N rows of the manifest")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    out = (args.out or Path(f"/tmp/fashion-products-{width}x{height}")).resolve()
    if out == args.source.resolve() or ROOT in out.parents or out == ROOT:
        raise SystemExit(f"error: write the copy outside the source set and the repository, not {out}")
    manifest = pd.read_csv(args.source / "manifest.csv", dtype=str, keep_default_na=False)
    if args.limit:
        manifest = manifest.head(args.limit)
    jobs = []
    for rel in manifest["path"]:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        jobs.append((str(args.source / rel), str(out / rel), width, height, args.quality))
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(enlarge, jobs, chunksize=32))
    manifest = manifest.assign(width=str(width), height=str(height))
    if "md5" in manifest:
        manifest = manifest.drop(columns=["md5"])  # of the source's bytes, not the copy's
    manifest.to_csv(out / "manifest.csv", index=False)
    print(f"{len(jobs)} images, {width} x {height}, in {out}")
    return out


if __name__ == "__main__":
    main()
