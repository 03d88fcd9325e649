"""python -m harness.bench: speed benchmarks, written to experiments/bench/*.json and printed as tables.

    python -m harness.bench extract --backbones efficientnet_lite0 resnet50 vgg16
    python -m harness.bench search

Every number is measured in the same process, on this machine, in the run that prints it.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from hydra import compose, initialize_config_dir

from harness.config import CONFIG_DIR, ROOT, instantiate
from harness.data.images import decode_image
from harness.extract import extract
from harness.store import FeatureStore

DEFAULT_CATALOG = ROOT.parent / "shared" / "data" / "fashion-products"


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version()}


def load_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def catalog_paths(root: Path, limit: int | None) -> list[str]:
    cfg = load_cfg("dataset=products", f"dataset.root={root}", f"dataset.limit={limit or 'null'}")
    return instantiate(cfg.dataset).load().items["path"].tolist()


def plain_loop(backbone, preprocess, paths: list[str]) -> float:
    """The study's loop: one image at a time, fp32, NCHW, the whole network. Returns images/s."""
    model = backbone.build().eval()
    mean = torch.tensor(backbone.mean).view(1, 3, 1, 1)
    std = torch.tensor(backbone.std).view(1, 3, 1, 1)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for p in paths:
            with open(p, "rb") as fh:
                img = preprocess(decode_image(fh.read()))
            x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
            model((x - mean) / std)
    return len(paths) / (time.perf_counter() - t0)


def harness_path(cfg, paths: list[str], batch_size: int, precision: str = "auto") -> tuple[float, np.ndarray]:
    backbone = instantiate(cfg.backbone, layer=cfg.layer.name, pooling=cfg.layer.pooling, precision=precision)
    with tempfile.TemporaryDirectory() as tmp:
        store = FeatureStore(str(Path(tmp) / "f.sqlite"))
        feats = extract(paths, backbone, instantiate(cfg.preprocess), store, batch_size=batch_size,
                        num_workers=cfg.extract.num_workers, progress=False)
        store.close()
    return feats.extracted / feats.embed_seconds, feats.emb


def topk_agreement(a: np.ndarray, b: np.ndarray, k: int = 5) -> float:
    """Mean share of the cosine top-k (leave-one-out over the catalog) that two feature sets share."""
    from harness.metrics import Cosine
    from harness.search import build_index

    idx = [build_index(x, Cosine()).search(x, k + 1)[1][:, 1:] for x in (a, b)]
    return float(np.mean([len(set(p) & set(q)) / k for p, q in zip(*idx)]))


def bench_extract(args) -> list[dict]:
    rows = []
    for name in args.backbones:
        weights = "imagenet" if name == "efficientnet_lite0" else "random"
        cfg = load_cfg(f"backbone={name}", f"backbone.weights={weights}")
        n = args.images if name != "vgg16" and name != "vgg19" else min(args.images, 512)
        paths = catalog_paths(args.catalog, n)
        backbone = instantiate(cfg.backbone, layer=cfg.layer.name, pooling=cfg.layer.pooling)
        plain = plain_loop(backbone, instantiate(cfg.preprocess), paths[: args.plain_images])
        for bs in args.batch_sizes:
            ips, _ = harness_path(cfg, paths, bs)
            rows.append({"backbone": name, "weights": weights, "images": len(paths), "batch_size": bs,
                         "precision": backbone.precision, "harness_images_per_s": round(ips, 1),
                         "plain_fp32_images_per_s": round(plain, 1), "speedup": round(ips / plain, 2)})
            print(rows[-1], flush=True)
    if args.agreement:
        cfg = load_cfg("backbone=efficientnet_lite0")
        paths = catalog_paths(args.catalog, None)
        _, bf16 = harness_path(cfg, paths, args.batch_sizes[0], "bf16")
        _, fp32 = harness_path(cfg, paths, args.batch_sizes[0], "fp32")
        rows.append({"backbone": "efficientnet_lite0", "images": len(paths),
                     "fp32_vs_bf16_top5_agreement": round(topk_agreement(fp32, bf16), 4)})
        print(rows[-1], flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m harness.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="section", required=True)
    ex = sub.add_parser("extract", help="extraction images/s: plain fp32 loop vs the harness path")
    ex.add_argument("--backbones", nargs="+", default=["efficientnet_lite0", "resnet50", "vgg16"])
    ex.add_argument("--catalog", type=Path, default=DEFAULT_CATALOG)
    ex.add_argument("--images", type=int, default=1024, help="images per harness-path measurement")
    ex.add_argument("--plain-images", type=int, default=128)
    ex.add_argument("--batch-sizes", type=int, nargs="+", default=[8])
    ex.add_argument("--agreement", action="store_true", help="also fp32-vs-bf16 top-5 agreement")
    for p in sub.choices.values():
        p.add_argument("--out", type=Path, default=ROOT / "experiments" / "bench")
    args = parser.parse_args(argv)
    rows = {"extract": bench_extract}[args.section](args)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"section": args.section, "machine": machine(), "date": time.strftime("%Y-%m-%d"), "rows": rows}
    path = args.out / f"{args.section}.json"
    path.write_text(json.dumps(result, indent=2))
    print(pd.DataFrame(rows).to_string(index=False))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
