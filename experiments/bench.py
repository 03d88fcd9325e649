"""python experiments/bench.py: speed benchmarks, written to experiments/bench/*.json and printed as tables.

    python experiments/bench.py extract --backbones efficientnet_lite0 resnet50 vgg16 --agreement
    python experiments/bench.py search     # exact search vs scikit-learn, N = 10k/100k, D = 1280/4096
    python experiments/bench.py ann        # IVF vs exact over 1M x 1280 clustered vectors
    python experiments/bench.py grid       # 3 backbones x 6 metrics vs extracting once per backbone
    python experiments/bench.py serve      # p50 latency of one photo query over the products catalog
    python experiments/bench.py peak       # this CPU's GEMM FLOP/s, and each runtime's share of it
    python experiments/bench.py scale      # engine=ray vs local on the products catalog
    python experiments/bench.py decode --quality   # JPEG scaled vs full decoding on 1080x1440 copies
    python experiments/bench.py int8 --quality     # OpenVINO int8 vs fp32 and bf16 (--max-isa AVX2: as on AVX2)
    python experiments/bench.py index              # the served index over 1M x 1280: build, 1 % update, queries
    python experiments/bench.py milvus             # index.backend=milvus on Milvus Lite: FLAT, HNSW, IVF_FLAT vs exact
    python experiments/bench.py dedup              # near-duplicates over 1M x 1280 with planted pairs
    python experiments/bench.py frozen             # experiment=frozen_best and its steps, products 5-fold
    python experiments/bench.py finetune           # train=metric per fold vs LDA, products 5-fold
    python experiments/bench.py train_engines      # train/engine=local vs ray (2 workers), one training

Every number is measured in the same process, on this machine, in the run that prints it. Every
component comes from the project's config through `harness.pipeline.build`, as a run builds it.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf

from harness.backbones.base import cpu_has_bf16
from harness.config import CONFIG_DIR, ROOT, compose_config, instantiate
from harness.data.images import decode_image
from harness.extract import extract
from harness.machine import machine
from harness.pipeline import Pipeline, build
from harness.runtimes.openvino import openvino_installed
from harness.store import FeatureStore

DEFAULT_CATALOG = ROOT.parent / "shared" / "data" / "fashion-products"


def pipeline(*overrides: str) -> Pipeline:
    """The run's components for these overrides, built as a run builds them (nothing tracked)."""
    return build(compose_config(*overrides, "tracker=none"))




def catalog_paths(root: Path, limit: int | None) -> list[str]:
    cfg = compose_config("dataset=products", f"dataset.root={root}", f"dataset.limit={limit or 'null'}")
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


def harness_path(pipe: Pipeline, paths: list[str], batch_size: int | None = None):
    """`extract` into an empty store, as a run does. Returns its Features (rates from embed_seconds)."""
    with tempfile.TemporaryDirectory() as tmp:
        store = FeatureStore(str(Path(tmp) / "f.sqlite"))
        feats = extract(paths, pipe.backbone, pipe.preprocess, store, batch_size=batch_size or pipe.cfg.extract.batch_size,
                        progress=False, engine=pipe.engine, calibration=pipe.cfg.extract.calibration)
        store.close()
    feats.runtime = pipe.backbone.runtime.name  # what actually ran (a network that does not convert falls back)
    return feats


def where_the_time_went(feats) -> dict:
    """The feature stage's wall seconds per stage in this process, and CPU seconds per stage summed over
    the decoding processes (read, decode, preprocess) and the network (embed)."""
    return {"wall": {k: round(v, 2) for k, v in feats.stages.items()},
            "cpu": {k: round(v, 2) for k, v in feats.cpu_seconds.items()}}


def topk_agreement(a: np.ndarray, b: np.ndarray, k: int = 5) -> float:
    """Mean share of the cosine top-k (leave-one-out over the catalog) that two feature sets share."""
    from harness.metrics import Cosine
    from harness.search import build_index

    idx = [build_index(x, Cosine()).search(x, k + 1)[1][:, 1:] for x in (a, b)]
    return float(np.mean([len(set(p) & set(q)) / k for p, q in zip(*idx)]))


def backbone_spec(entry: str) -> tuple[str, list[str]]:
    """'name' or 'name:key=value,key=value' → (preset, overrides): a preset measured through another
    architecture (an hf-hub preset offline: its architecture's built-in config, random weights)."""
    name, _, rest = entry.partition(":")
    return name, [f"backbone.{kv}" for kv in rest.split(",") if kv]


def runtimes(compile: bool) -> dict[str, tuple[str, list[str]]]:
    """The ways to run a network, as (runtime that should run, overrides): torch eager (the CPU's default
    precision, and fp32), torch compiled, OpenVINO fp32 and, where the CPU has bf16, OpenVINO bf16."""
    out = {"torch": ("torch", ["runtime=torch"]), "torch_fp32": ("torch", ["runtime=torch", "backbone.precision=fp32"])}
    if compile:
        out["torch_compiled"] = ("inductor", ["runtime=inductor"])
    if openvino_installed():
        out["openvino_fp32"] = ("openvino", ["runtime=openvino", "backbone.precision=fp32"])
        if cpu_has_bf16():
            out["openvino_bf16"] = ("openvino", ["runtime=openvino", "backbone.precision=bf16"])
        if nncf_installed():
            out["openvino_int8"] = ("openvino", ["runtime=openvino", "backbone.precision=int8"])
    return out


def nncf_installed() -> bool:
    try:
        import nncf  # noqa: F401
    except ImportError:
        return False
    return True


def bench_extract(args) -> list[dict]:
    """Images/s with decode included, every runtime in the same run, `--rounds` interleaved rounds
    (so drift on a shared machine hits every variant alike); medians reported, every round kept."""
    rows, variants = [], runtimes(args.compile)
    for entry in args.backbones:
        name, overrides = backbone_spec(entry)
        weights = "imagenet" if name == "efficientnet_lite0" else "random"
        common = (f"backbone={name}", f"backbone.weights={weights}", *overrides)
        n = args.images if name != "vgg16" and name != "vgg19" else min(args.images, 512)
        paths = catalog_paths(args.catalog, n)
        plain = pipeline(*common, "runtime=torch")
        backbone = plain.backbone
        rates: dict[str, list[float]] = {"plain_fp32_loop": []} if args.plain_images else {}
        prepare, breakdown = {}, {}
        for _ in range(args.rounds):
            if args.plain_images:
                rates["plain_fp32_loop"].append(plain_loop(backbone, plain.preprocess, paths[: args.plain_images]))
            for label, (runtime, settings) in variants.items():
                feats = harness_path(pipeline(*common, *settings), paths, args.batch_size)
                rates.setdefault(label if feats.runtime == runtime else f"{label}_fell_back", []).append(
                    feats.extracted / feats.embed_seconds)
                prepare.setdefault(label, round(feats.compile_seconds, 1))  # the first round: converting/compiling
                breakdown[label] = where_the_time_went(feats)  # the last round's
        median = {k: round(float(np.median(v)), 1) for k, v in rates.items()}
        row = {"backbone": entry, "arch": backbone.arch, "weights": weights, "images": len(paths),
               "input_size": backbone.input_size, "dim": backbone.dim if weights == "random" else None,
               "batch_size": args.batch_size, "default_precision": backbone.precision, "rounds": args.rounds,
               "images_per_s": median, "all_rounds": {k: [round(x, 1) for x in v] for k, v in rates.items()},
               "first_prepare_seconds": prepare, "seconds_per_stage": breakdown}
        if args.plain_images:
            row["speedup_vs_plain"] = {k: round(v / median["plain_fp32_loop"], 2) for k, v in median.items()
                                       if k != "plain_fp32_loop"}
        rows.append(row)
        print(row, flush=True)
    for name in args.agreement:
        common = (f"backbone={name}", f"backbone.weights={'imagenet' if name == 'efficientnet_lite0' else 'random'}")
        paths = catalog_paths(args.catalog, None)
        reference = harness_path(pipeline(*common, *variants["torch_fp32"][1]), paths, args.batch_size).emb
        row = {"backbone": name, "images": len(paths), "top5_agreement_with_torch_fp32": {}}
        for label, (_, settings) in variants.items():
            if label in ("torch_fp32", "torch_compiled"):
                continue
            emb = harness_path(pipeline(*common, *settings), paths, args.batch_size).emb
            row["top5_agreement_with_torch_fp32"][label] = round(topk_agreement(reference, emb), 4)
        rows.append(row)
        print(row, flush=True)
    return rows


def gemm_gflops(dtype: torch.dtype, seconds: float, n: int = 4096) -> float:
    """Sustained matrix-multiply GFLOP/s: the ceiling for convolution and linear layers on this CPU."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        done += 1
    return 2 * n ** 3 * done / (time.perf_counter() - t0) / 1e9


def bench_peak(args) -> list[dict]:
    """How close each runtime gets to the hardware: the network's FLOPs per image (up to the tapped layer)
    times its forward rate on random input (no decode), as a share of this CPU's GEMM rate in the same
    precision (fp32 runtimes against the fp32 GEMM, bf16 ones against the bf16 GEMM)."""
    from torch.utils.flop_counter import FlopCounterMode

    peak = {"fp32": gemm_gflops(torch.float32, args.seconds), "bf16": gemm_gflops(torch.bfloat16, args.seconds)}
    rows = [{"backbone": "GEMM 4096^3", **{f"{p}_gemm_gflops": round(v, 1) for p, v in peak.items()}}]
    print(rows[-1], flush=True)
    for name in args.backbones:
        common = (f"backbone={name}", "backbone.weights=random")
        counted = pipeline(*common, "runtime=torch", "backbone.precision=fp32").backbone
        images = torch.randint(0, 256, (args.batch_size, 3, counted.input_size, counted.input_size), dtype=torch.uint8)
        with FlopCounterMode(display=False) as counter:
            counted.embed(images[:1])
        gflop = counter.get_total_flops() / 1e9
        row = {"backbone": name, "gflop_per_image": round(gflop, 2), "batch_size": args.batch_size,
               "ceiling_images_per_s": {p: round(v / gflop, 1) for p, v in peak.items()},
               "forward_images_per_s": {}, "share_of_ceiling": {}}
        for label, (_, settings) in runtimes(compile=False).items():
            backbone = pipeline(*common, *settings).backbone
            backbone.prepare(args.batch_size)
            backbone.embed(images)
            done, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < args.seconds:
                backbone.embed(images)
                done += len(images)
            forward = done / (time.perf_counter() - t0)
            label = f"{label} ({backbone.precision})" if label == "torch" else label
            row["forward_images_per_s"][label] = round(forward, 1)
            row["share_of_ceiling"][label] = round(forward * gflop / peak[backbone.precision], 2)
        rows.append(row)
        print(row, flush=True)
    return rows


METRICS = sorted(p.stem for p in (CONFIG_DIR / "metric").glob("*.yaml"))  # every conf/metric option
METRIC_OVERRIDES = {"minkowski": ["metric.p=3"]}  # p=2 would be euclidean again


def clustered(n: int, d: int, seed: int, centres: int = 1000) -> np.ndarray:
    """Synthetic embeddings: Gaussian clusters, like a catalog of many similar products.

    The cluster centres depend on (centres, d) only, so queries (another seed) come from the
    catalog's own clusters, as a shopper's photo comes from the shop's kind of products.
    """
    c = np.random.default_rng([centres, d]).normal(size=(centres, d)).astype(np.float32) * 3
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), np.float32)
    for s in range(0, n, 50_000):  # bounded temporaries for 1M rows
        m = min(50_000, n - s)
        out[s:s + m] = c[rng.integers(0, centres, m)] + rng.normal(size=(m, d)).astype(np.float32)
    return out


def _timed(fn, *args):
    import tracemalloc

    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn(*args)
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, seconds, peak / 2**20


def bench_search(args) -> list[dict]:
    from sklearn.neighbors import VALID_METRICS, NearestNeighbors

    from harness.search import build_index

    rows = []
    for n in args.n:
        for d in args.dims:
            ref, query = clustered(n, d, 0), clustered(args.queries, d, 1)
            for name in args.metrics:
                metric = instantiate(compose_config(f"metric={name}", *METRIC_OVERRIDES.get(name, [])).metric)
                index, build_s, _ = _timed(build_index, ref, metric)
                (dist, idx), secs, mem = _timed(index.search, query, args.k)
                del index
                if name not in VALID_METRICS["brute"]:  # a metric of our own: nothing to compare with
                    rows.append({"n": n, "dim": d, "metric": repr(metric), "queries": len(query),
                                 "harness_qps": round(len(query) / secs, 1), "harness_build_s": round(build_s, 2)})
                    print(rows[-1], flush=True)
                    continue
                params = {"p": metric.p} if hasattr(metric, "p") else {}
                nn = NearestNeighbors(n_neighbors=args.k, algorithm="brute", metric=name, **params).fit(ref)
                # scikit-learn is timed on a prefix of the queries where it is slow: 10, then batches of 100
                m, t0 = 0, time.perf_counter()
                sk_idx = []
                while m < len(query) and (m < 10 or time.perf_counter() - t0 < args.sklearn_seconds):
                    step = 10 if m == 0 else 100
                    sk_idx.append(nn.kneighbors(query[m:m + step], return_distance=False))
                    m += len(sk_idx[-1])
                sk_qps = m / (time.perf_counter() - t0)
                sk_idx = np.concatenate(sk_idx)
                same = float(np.mean(np.all(np.sort(sk_idx, 1) == np.sort(idx[:m], 1), axis=1)))
                rows.append({"n": n, "dim": d, "metric": repr(metric), "queries": len(query),
                             "harness_qps": round(len(query) / secs, 1), "sklearn_qps": round(sk_qps, 1),
                             "harness_build_s": round(build_s, 2),
                             "speedup": round(len(query) / secs / sk_qps, 2), "same_neighbours": round(same, 4),
                             "sklearn_queries": m, "harness_peak_mib": round(mem, 1)})
                print(rows[-1], flush=True)
    return rows


def bench_ann(args) -> list[dict]:
    """Recall@k against queries/s for exact, IVF (per nprobe) and HNSW (per ef_search) on one clustered
    catalog, and the ann-benchmarks-style Pareto plot of them (`<name>_pareto.png` beside the JSON)."""
    from harness.metrics import Euclidean
    from harness.search import build_index

    ref, query = clustered(args.n, args.dim, 0, centres=args.centres), clustered(args.queries, args.dim, 1, centres=args.centres)
    metric, rows = Euclidean(), []
    exact_index = build_index(ref, metric)
    t0 = time.perf_counter()
    _, exact = exact_index.search(query, args.k)  # timed without building, as the approximate ones are
    exact_s = time.perf_counter() - t0
    del exact_index
    rows.append({"index": "exact", "n": args.n, "dim": args.dim, "queries": args.queries, "build_seconds": 0.0,
                 "exact_qps": round(args.queries / exact_s, 1), "ann_qps": round(args.queries / exact_s, 1),
                 "speedup": 1.0, f"recall_at_{args.k}": 1.0})
    for kind in args.kinds:
        t0 = time.perf_counter()
        params = {"nlist": args.nlist, "codec": args.codec, "rerank": args.rerank} if kind == "ivf" else {}
        index = build_index(ref, metric, instantiate(compose_config(f"search={kind}").search.index), **params)
        build_s = time.perf_counter() - t0
        for setting in args.nprobe if kind == "ivf" else args.ef_search if kind == "hnsw" else [None]:
            if kind == "ivf":
                index.nprobe = setting
            elif kind == "hnsw":
                index.faiss.hnsw.efSearch = setting
            t0 = time.perf_counter()
            _, approx = index.search(query, args.k)
            ann_s = time.perf_counter() - t0
            recall = float(np.mean([len(set(a) & set(e)) / args.k for a, e in zip(approx, exact)]))
            rows.append({"index": kind, **{k: v for k, v in params.items() if v is not None},
                         ("nprobe" if kind == "ivf" else "ef_search"): setting,
                         "n": args.n, "dim": args.dim, "queries": args.queries,
                         "build_seconds": round(build_s, 1), "exact_qps": round(args.queries / exact_s, 1),
                         "ann_qps": round(args.queries / ann_s, 1), "speedup": round(exact_s / ann_s, 1),
                         f"recall_at_{args.k}": round(recall, 4)})
            print(rows[-1], flush=True)
        del index
    args.out.mkdir(parents=True, exist_ok=True)
    ann_pareto(rows, args.k).savefig(args.out / f"{args.name or 'ann'}_pareto.png", dpi=110)
    return rows


def ann_pareto(rows: list[dict], k: int):
    """Recall@k (x) against queries/s (y, log), one line per index over its settings, the frontier marked."""
    from matplotlib.figure import Figure

    from harness.leaderboard import pareto_front

    table = pd.DataFrame(rows)
    recall = f"recall_at_{k}"
    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.subplots()
    for kind, group in table.groupby("index", sort=False):
        ax.plot(group[recall], group["ann_qps"], marker="o", label=kind)
        for r in group.itertuples():
            setting = getattr(r, "nprobe", None) if kind == "ivf" else getattr(r, "ef_search", None) if kind == "hnsw" else None
            if setting is not None and setting == setting:
                ax.annotate(f"{'nprobe' if kind == 'ivf' else 'ef'} {int(setting)}", (getattr(r, recall), r.ann_qps),
                            fontsize=7, xytext=(3, 3), textcoords="offset points")
    front = table[pareto_front(table[recall].to_numpy(), table["ann_qps"].to_numpy())].sort_values(recall)
    ax.plot(front[recall], front["ann_qps"], color="black", lw=0.8, ls="--", label="Pareto frontier")
    n, dim = int(table["n"].iloc[0]), int(table["dim"].iloc[0])
    ax.set(xlabel=f"recall@{k}", ylabel="queries/s (one batch, this machine)", yscale="log",
           title=f"{n:,} × {dim} clustered vectors, euclidean")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def bench_grid(args) -> list[dict]:
    """The study's 18 runs through `python -m harness -m` vs only extracting once per backbone."""
    import subprocess
    import sys

    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "harness", "-m", "dataset=products", f"dataset.root={args.catalog}",
               f"backbone={','.join(args.backbones)}", "backbone.weights=random",
               "metric=euclidean,manhattan,minkowski,chebyshev,correlation,cosine",
               f"paths.root={tmp}", "extract.progress=false"]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)
        grid_s = time.perf_counter() - t0
    paths = catalog_paths(args.catalog, None)
    t0 = time.perf_counter()
    for name in args.backbones:
        harness_path(pipeline(f"backbone={name}", "backbone.weights=random"), paths)
    extract_s = time.perf_counter() - t0
    row = {"runs": 6 * len(args.backbones), "backbones": " ".join(args.backbones), "images": len(paths),
           "grid_seconds": round(grid_s, 1), "extract_once_seconds": round(extract_s, 1),
           "ratio": round(grid_s / extract_s, 3)}
    print(row, flush=True)
    return [row]


def products_searcher(catalog: Path, *overrides: str):
    """A Searcher over the whole products catalog, features from (or into) the project's store, served
    as a run serves it."""
    from harness.protocols import restrict
    from harness.serving.package import served_parts

    pipe = pipeline("dataset=products", f"dataset.root={catalog}", "extract.progress=false", *overrides)
    catalog = pipe.dataset.load()
    items = catalog.items
    store = pipe.open_store()
    feats = pipe.extract(catalog, store)
    store.close()
    served, _ = restrict(catalog, [], feats.valid)
    return served_parts(pipe.cfg, served, feats.emb[feats.valid], run={"run_id": "bench"},
                        calibration=pipe.backbone.calibration, projection=pipe.projection, metric=pipe.metric,
                        augment=pipe.augment).searcher(), items


def bench_serve(args) -> list[dict]:
    """Single-photo query latency through the Searcher: decode + extract + search."""
    searcher, items = products_searcher(args.catalog)
    payloads = [open(p, "rb").read() for p in items["path"].sample(args.queries + 5, random_state=0)]
    for data in payloads[:5]:  # warm-up: first calls build oneDNN kernels
        searcher.search([data])
    times = []
    for data in payloads[5:]:
        t0 = time.perf_counter()
        searcher.search([data])
        times.append((time.perf_counter() - t0) * 1000)
    row = {"backbone": searcher.settings.backbone["arch"], "catalog": len(searcher.catalog),
           "queries": len(times), "p50_ms": round(float(np.percentile(times, 50)), 1),
           "p90_ms": round(float(np.percentile(times, 90)), 1), "p99_ms": round(float(np.percentile(times, 99)), 1)}
    print(row, flush=True)
    return [row]


def bench_decode(args) -> list[dict]:
    """Decoding at the network's scale: images/s with JPEG DCT-scaled decoding vs full decoding, on
    catalog-resolution photos (`experiments/make_large_catalog.py`) and on the thumbnails they were made
    from, interleaved rounds in one process; then, with the real efficientnet_lite0 weights, the products
    P@5 (holdout and 10-fold) from scaled vs full decoding of the large photos and their top-5 agreement."""
    from harness.run import run

    catalogs = {"large": args.large, "thumbnails": args.catalog}
    variants = {"scaled": ["preprocess.scaled_decode=true"], "scaled_gap2": ["preprocess.decode_gap=2"],
                "full": ["preprocess.scaled_decode=false"]}
    rows = []
    for name in args.backbones:
        common = (f"backbone={name}", f"backbone.weights={'imagenet' if name == 'efficientnet_lite0' else 'random'}")
        rates: dict[str, list[float]] = {}
        breakdown = {}
        for _ in range(args.rounds):
            for catalog, root in catalogs.items():
                paths = catalog_paths(root, args.images)
                for label, settings in variants.items():
                    feats = harness_path(pipeline(*common, *settings), paths)
                    rates.setdefault(f"{catalog}_{label}", []).append(round(feats.extracted / feats.embed_seconds, 1))
                    breakdown[f"{catalog}_{label}"] = where_the_time_went(feats)
        median = {k: float(np.median(v)) for k, v in rates.items()}
        row = {"backbone": name, "images": args.images, "rounds": args.rounds, "images_per_s": median,
               "all_rounds": rates,
               "large_scaled_vs_full": round(median["large_scaled"] / median["large_full"], 3),
               "large_scaled_gap2_vs_full": round(median["large_scaled_gap2"] / median["large_full"], 3),
               "large_scaled_vs_thumbnails": round(median["large_scaled"] / median["thumbnails_scaled"], 3),
               "thumbnails_scaled_vs_full": round(median["thumbnails_scaled"] / median["thumbnails_full"], 3),
               "seconds_per_stage": breakdown}
        rows.append(row)
        print(row, flush=True)
    if args.quality:
        # Per precision: with bf16 the network's own rounding differs between two slightly different
        # inputs, so the bf16 agreement mixes that noise with the decoding's effect; fp32 isolates decoding.
        for precision in args.quality_precisions:
            with tempfile.TemporaryDirectory() as tmp:
                scores, emb = {}, {}
                for label, settings in variants.items():
                    settings = [*settings, f"backbone.precision={precision}"]
                    for protocol in ("holdout", "kfold"):
                        cfg = compose_config("dataset=products", f"dataset.root={args.large}", f"protocol={protocol}",
                                             "extract.progress=false", "tracker=none", f"paths.root={tmp}/{label}",
                                             *settings, *(["protocol.folds=10"] if protocol == "kfold" else []))
                        metrics = run(cfg)
                        for level in ("category", "subcategory"):
                            key = f"{level}_precision_at_5" + ("_mean" if protocol == "kfold" else "")
                            scores[f"{protocol}_{level}_p5_{label}"] = metrics[key]
                    emb[label] = harness_path(pipeline("dataset=products", f"dataset.root={args.large}", *settings,
                                                       f"paths.root={tmp}/{label}"), catalog_paths(args.large, None)).emb
                row = {"quality": f"efficientnet_lite0 imagenet, large photos, precision={precision}",
                       **{k: round(v, 4) for k, v in scores.items()},
                       **{f"max_abs_p5_difference_{label}": round(max(abs(scores[k] - scores[k.replace(label, "full")])
                                                                      for k in scores if k.endswith(f"_{label}")), 4)
                          for label in variants if label != "full"},
                       **{f"top5_agreement_{label}_vs_full": round(topk_agreement(emb[label], emb["full"]), 4)
                          for label in variants if label != "full"}}
                rows.append(row)
                print(row, flush=True)
    return rows


def bench_segment(args) -> list[dict]:
    """Finding the product in clutter: preprocess=resize, roi, segment (GrabCut) and detect (torchvision
    Mask R-CNN) on the composite queries (`experiments/composite_queries.py`) against the studio catalog,
    with the real efficientnet_lite0 weights: same-product Recall@1/5, category and subcategory P@5, and
    the preprocessing's CPU milliseconds per image; the true box (`preprocess.crop=bbox` on the queries)
    as the ceiling; segment also with keep_contrast=false (GrabCut's mask alone on studio photos). Then the
    studio catalog alone, segment (both ways) vs roi (holdout and 5-fold P@5), and the colour
    correlation of the segment run's neighbours over whole photos, ROI crops and GrabCut's regions."""
    from harness.run import run

    variants = {"resize": ["preprocess=resize"], "roi": ["preprocess=roi"], "segment": ["preprocess=segment"],
                "segment, keep_contrast=false": ["preprocess=segment", "preprocess.keep_contrast=false"],
                f"detect {args.detect_arch} ({args.detect_weights} weights)": [
                    "preprocess=detect", f"preprocess.arch={args.detect_arch}", f"preprocess.weights={args.detect_weights}",
                    f"preprocess.min_size={args.detect_min_size}"],
                "true box (resize, crop=bbox)": ["preprocess=resize", "preprocess.crop=bbox"]}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        common = ("dataset=products", f"dataset.root={args.catalog}", "extract.progress=false", "tracker=none",
                  f"paths.root={tmp}")
        for label, settings in variants.items():
            if label.startswith("detect") and args.skip_detect:
                continue
            metrics = run(compose_config(*common, "protocol=queries", f"protocol.root={args.queries}",
                                         "evaluator=product", *settings))
            n = metrics.get("images_extracted") or 1
            row = {"composite": label, "queries": int(metrics["n_queries"]),
                   **{k: round(metrics[k], 4) for k in ("product_recall_at_1", "product_recall_at_5",
                                                       "category_precision_at_5", "subcategory_precision_at_5")},
                   "preprocess_ms_per_image": round(1000 * metrics.get("cpu_seconds/preprocess", 0) / n, 1),
                   "decode_ms_per_image": round(1000 * metrics.get("cpu_seconds/decode", 0) / n, 1),
                   "images_per_second": round(metrics.get("images_per_second", 0), 1), "images": int(n)}
            rows.append(row)
            print(row, flush=True)
        # The YAML's default detector, timed alone on a few query photos (the whole catalog through it
        # would take hours on two cores): seconds per photo, one thread, as in a decoding process.
        from harness.detect import Detected

        torch.set_num_threads(1)
        photos = sorted((args.queries / "images").glob("*.jpg"))[:10]
        for arch in (args.detect_arch, "maskrcnn_resnet50_fpn_v2"):
            detector = Detected(arch=arch, weights=args.detect_weights, min_size=args.detect_min_size)
            images = [decode_image(p.read_bytes()) for p in photos]
            detector.mask(images[0])
            t0 = time.perf_counter()
            for img in images:
                detector.mask(img)
            row = {"detector alone": f"{arch} ({args.detect_weights} weights)", "photos": len(images),
                   "seconds_per_photo_one_thread": round((time.perf_counter() - t0) / len(images), 3)}
            rows.append(row)
            print(row, flush=True)
        torch.set_num_threads(os.cpu_count() or 1)
        studio = {"roi": ["preprocess=roi"], "segment": ["preprocess=segment"],
                  "segment, keep_contrast=false": ["preprocess=segment", "preprocess.keep_contrast=false"]}
        for label, settings in studio.items():
            row = {"studio": label}
            for protocol in ("holdout", "kfold"):
                metrics = run(compose_config(*common, f"protocol={protocol}", *settings,
                                             *(["protocol.folds=5"] if protocol == "kfold" else [])))
                for level in ("category", "subcategory"):
                    key = f"{level}_precision_at_5" + ("_mean" if protocol == "kfold" else "")
                    row[f"{protocol}_{level}_p5"] = round(metrics[key], 4)
            rows.append(row)
            print(row, flush=True)
        metrics = run(compose_config(*common, "preprocess=segment", "evaluator=color_texture", "evaluator.region=all"))
        row = {"colour": "segment run's top 5, holdout",
               **{k: round(metrics[k], 4) for k in ("color_correlation_mean", "color_correlation_roi_mean",
                                                   "color_correlation_segment_mean", "texture_chi2_mean",
                                                   "texture_chi2_roi_mean", "texture_chi2_segment_mean")}}
        rows.append(row)
        print(row, flush=True)
    return rows


def bench_int8(args) -> list[dict]:
    """int8 (NNCF, calibrated on extract.calibration's catalog sample) against OpenVINO fp32 and bf16,
    through the harness (decode included), interleaved rounds in one process; `--max-isa AVX2` runs the
    same in a child process whose oneDNN kernels (OpenVINO's CPU plugin's) are limited to AVX2, as on a
    CPU without AVX-512, VNNI or bf16. `--quality`: efficientnet_lite0 with its real weights, products
    5-fold P@5 per level for each precision, and each one's top-5 agreement with fp32."""
    import subprocess
    import sys

    from harness.run import run

    if args.max_isa and os.environ.get("ONEDNN_MAX_CPU_ISA") != args.max_isa:
        with tempfile.TemporaryDirectory() as tmp:
            child = [sys.executable, __file__, "int8", "--catalog", str(args.catalog), "--images", str(args.images),
                     "--rounds", str(args.rounds), "--max-isa", args.max_isa, "--out", tmp, "--name", "child",
                     "--backbones", *args.backbones, "--precisions", *[p for p in args.precisions if p != "bf16"],
                     *(["--quality"] if args.quality else [])]
            subprocess.run(child, check=True, env={**os.environ, "ONEDNN_MAX_CPU_ISA": args.max_isa})
            return [{**row, "max_isa": args.max_isa} for row in json.loads((Path(tmp) / "child.json").read_text())["rows"]]
    precisions = [p for p in args.precisions if p != "bf16" or (cpu_has_bf16() and not args.max_isa)]
    rows = []
    for name in args.backbones:
        common = (f"backbone={name}", f"backbone.weights={'imagenet' if name == 'efficientnet_lite0' else 'random'}",
                  "runtime=openvino", "dataset=products", f"dataset.root={args.catalog}")
        paths = catalog_paths(args.catalog, args.images)
        rates: dict[str, list[float]] = {}
        prepare, breakdown = {}, {}
        for _ in range(args.rounds):
            for precision in precisions:
                feats = harness_path(pipeline(*common, f"backbone.precision={precision}"), paths)
                rates.setdefault(precision, []).append(round(feats.extracted / feats.embed_seconds, 1))
                prepare.setdefault(precision, round(feats.compile_seconds, 1))  # first round: converting, quantizing
                breakdown[precision] = where_the_time_went(feats)
        median = {k: float(np.median(v)) for k, v in rates.items()}
        row = {"backbone": name, "images": len(paths), "rounds": args.rounds, "max_isa": args.max_isa or "native",
               "images_per_s": median, "all_rounds": rates, "first_prepare_seconds": prepare,
               **{f"int8_vs_{p}": round(median["int8"] / median[p], 3) for p in precisions if p != "int8" and "int8" in median},
               "seconds_per_stage": breakdown}
        rows.append(row)
        print(row, flush=True)
    if args.quality:
        levels = "[category,subcategory,article_type]"
        emb, scores = {}, {}
        with tempfile.TemporaryDirectory() as tmp:
            for precision in precisions:
                overrides = ("dataset=products", f"dataset.root={args.catalog}", f"dataset.levels={levels}",
                             "protocol=kfold", "protocol.folds=5", "runtime=openvino", f"backbone.precision={precision}",
                             "extract.progress=false", f"paths.root={tmp}", f"paths.openvino={ROOT / '.cache' / 'openvino'}")
                metrics = run(compose_config(*overrides, "tracker=none"))
                for level in ("category", "subcategory", "article_type"):
                    scores[f"{level}_p5_{precision}"] = round(metrics[f"{level}_precision_at_5_mean"], 4)
                    scores[f"{level}_p5_std_{precision}"] = round(metrics[f"{level}_precision_at_5_std"], 4)
                emb[precision] = harness_path(pipeline(*overrides), catalog_paths(args.catalog, None)).emb
        row = {"quality": "efficientnet_lite0 imagenet, products 5-fold", "max_isa": args.max_isa or "native", **scores,
               **{f"max_abs_p5_difference_{p}_vs_fp32": round(max(abs(scores[f"{lv}_p5_{p}"] - scores[f"{lv}_p5_fp32"])
                                                                for lv in ("category", "subcategory", "article_type")), 4)
                  for p in precisions if p != "fp32"},
               **{f"top5_agreement_{p}_vs_fp32": round(topk_agreement(emb[p], emb["fp32"]), 4)
                  for p in precisions if p != "fp32"}}
        rows.append(row)
        print(row, flush=True)
    return rows


# Each row: experiment=frozen_best with some of its steps turned off (the preset is row c). A single
# EfficientNet-Lite0 needs no PCA in front of LDA (1280-d features for 2,356 catalog rows per fold).
LITE0 = ["backbone=efficientnet_lite0", "projection.pca_dim=null"]
PLAIN = ["augment=none", "query_expansion=none"]
FROZEN_ROWS = {
    "a: off the shelf (lite0, GAP)": [*LITE0, "projection=none", *PLAIN],
    "b: LDA (shrinkage cv)": [*LITE0, "projection.shrinkage=cv", *PLAIN],
    "LDA 0.1": [*LITE0, *PLAIN],
    "LDA 0.1 + class-mean augmentation": [*LITE0, "query_expansion=none"],
    "LDA 0.1 + query expansion": [*LITE0, "augment=none"],
    "GeM + LDA 0.1": [*LITE0, "layer.pooling=gem", *PLAIN],
    "GeM + flip + LDA 0.1": [*LITE0, "layer.pooling=gem", "tta=flip", *PLAIN],
    "lite0@300 GeM + LDA 0.1": [*LITE0, "backbone.input_size=300", "layer.pooling=gem", *PLAIN],
    "fused + PCA 1280 + LDA 0.1": PLAIN,
    "c: experiment=frozen_best": [],
}


# train=metric, a short schedule a 2-core CPU runs in minutes per fold (README "Fine-tuning"): the last
# 4 blocks and the head of EfficientNet-Lite0, 1 epoch of `steps` batches, Multi-Similarity loss.
FINETUNE = [*LITE0, "train=metric", "train.trainable_blocks=4", "train.epochs=1", "train.batch_size=32"]
FINETUNE_ROWS = {
    "b: LDA 0.1": [*LITE0, *PLAIN],
    "d: fine-tuned": [*FINETUNE, "projection=none", *PLAIN],
    "e: fine-tuned + LDA 0.1 + class-mean + query expansion": FINETUNE,
}


def bench_frozen(args) -> list[dict]:
    """experiment=frozen_best and its steps, products 5-fold, real weights: P@5 per level (mean ± std over
    the folds), the paired article-type gain over LDA (shrinkage cv) per fold, and each row's cost: the
    catalog's feature stage (measured when those features were first extracted; later rows with the same
    extractor read them from the store) and the folds' fitting and searching."""
    return score_rows(args, FROZEN_ROWS, "b: LDA (shrinkage cv)")


def bench_finetune(args) -> list[dict]:
    """train=metric per fold (its catalog rows only) against LDA on the same run's features, products
    5-fold, real lite0 weights; each row's training seconds (all folds) beside its scores."""
    return score_rows(args, {name: [*o, f"train.steps_per_epoch={args.steps}"] if "train=metric" in o else o
                             for name, o in FINETUNE_ROWS.items()}, "b: LDA 0.1")


def bench_train_engines(args) -> list[dict]:
    """One train=metric training (fold 0's catalog products, the finetune schedule, `steps` batches)
    in this process and on Ray Train's data-parallel workers: seconds, held-out P@5, and whether the
    workers ended with the same network."""
    from harness.train.folds import train_rows, training_rows

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for engine in args.engines:
            pipe = pipeline("experiment=frozen_best", f"dataset.root={args.catalog}", *FINETUNE,
                            f"train.steps_per_epoch={args.steps}", f"train/engine={engine}", "extract.progress=false",
                            f"paths.root={tmp}", f"paths.openvino={ROOT / '.cache' / 'openvino'}")
            catalog, folds = pipe.data()
            t0 = time.perf_counter()
            result = train_rows(pipe, catalog, training_rows(catalog, folds[0]))
            seconds = time.perf_counter() - t0
            row = {"engine": engine, "workers": getattr(pipe.trainer.engine, "workers", 1), "steps": args.steps,
                   "batch_size": pipe.trainer.batch_size, "train_images": len(result.trained_ids),
                   "seconds": round(seconds, 1), "epoch_seconds": round(result.history[-1]["seconds"], 1),
                   "loss": round(result.history[-1]["loss"], 4),
                   "holdout_p5_per_epoch": [round(h["holdout_precision_at_k"], 4) for h in result.history],
                   "best_epoch": result.best_epoch,
                   "workers_same_network": len({r["digest"] for r in result.replicas}) == 1,
                   "distinct_photos_per_worker": [len(r["ids"]) for r in result.replicas]}
            rows.append(row)
            print(row, flush=True)
    return rows


def score_rows(args, table: dict, baseline: str) -> list[dict]:
    from harness.protocols import restrict
    from harness.tracking.base import NullJob
    from harness.train.folds import train_folds

    levels, rows, per_fold, extracted = ("category", "subcategory", "article_type"), [], {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in table.items():
            if args.rows and not any(r in name for r in args.rows):
                continue
            pipe = pipeline("experiment=frozen_best", f"dataset.root={args.catalog}", *overrides,
                            "extract.progress=false", f"paths.root={tmp}", f"paths.openvino={ROOT / '.cache' / 'openvino'}")
            catalog, folds = pipe.data()
            store = pipe.open_store()
            feats = pipe.extract(catalog, store)
            store.close()
            key = feats.fingerprint
            extracted.setdefault(key, {"seconds": feats.seconds, "compile": feats.compile_seconds,
                                       "images_per_s": feats.metrics().get("images_per_second")})
            catalog, folds = restrict(catalog, folds, feats.valid)
            training, train_seconds = None, 0.0
            if pipe.trainer is not None:  # each fold's network trained, then the catalog embedded by it
                t0 = time.perf_counter()
                store = pipe.open_store()
                training = train_folds(pipe, catalog, folds, store, NullJob())
                store.close()
                train_seconds = time.perf_counter() - t0
            t0 = time.perf_counter()
            result = pipe.evaluate(training.emb if training else feats.emb[feats.valid], catalog, folds)
            seconds = time.perf_counter() - t0
            per_fold[name] = [m["article_type_precision_at_5"] for m in result.per_fold]
            row = {"row": name, "run_name": pipe.run_name, "dim": int(feats.emb.shape[1]),
                   **{f"{lv}_p5": round(result.metrics[f"{lv}_precision_at_5_mean"], 4) for lv in levels},
                   **{f"{lv}_p5_std": round(result.metrics[f"{lv}_precision_at_5_std"], 4) for lv in levels},
                   "feature_stage_seconds": round(extracted[key]["seconds"], 1),
                   "network_prepare_seconds": round(extracted[key]["compile"], 1),
                   "images_per_s": extracted[key]["images_per_s"] and round(extracted[key]["images_per_s"], 1),
                   "fit_and_search_seconds": round(seconds, 1),
                   "projection_fit_seconds": round(result.metrics.get("projection_fit_seconds", 0.0), 1)}
            if training is not None:
                row.update(train_and_embed_seconds=round(train_seconds, 1),
                           train_seconds=round(training.metrics["train_seconds"], 1),
                           train_images_per_fold=int(np.mean([len(r.trained_ids) for r in training.results])),
                           holdout_p5_per_epoch=[[round(h["holdout_precision_at_k"], 4) for h in r.history]
                                                 for r in training.results],
                           best_epochs=[r.best_epoch for r in training.results])
            base = per_fold.get(baseline)
            if base is not None:
                gain = 100 * (np.array(per_fold[name]) - np.array(base))
                row["article_type_gain_over_lda_points"] = round(float(gain.mean()), 2)
                row["article_type_gain_std_points"] = round(float(gain.std(ddof=1)), 2)
            rows.append(row)
            print(row, flush=True)
    return rows


def rss_mib() -> float:
    """This process's resident memory now."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def catalog_table(ids, rng) -> pd.DataFrame:
    """Items of a synthetic catalog: ids, hashes, paths, a category, a price, and a shard column whose
    value "7" keeps 1 % of the items (the benchmarks' filter)."""
    return pd.DataFrame({"item_id": ids, "content_hash": [f"{i:040x}" for i in rng.integers(0, 2**62, len(ids))],
                         "path": [f"/catalog/{i}.jpg" for i in ids], "category": rng.choice(["a", "b", "c"], len(ids)),
                         "price": rng.integers(1, 500, len(ids)).astype(str),
                         "shard": rng.integers(0, 100, len(ids)).astype(str)})


def bench_milvus(args) -> list[dict]:
    """index.backend=milvus on Milvus Lite: syncing an index version of N clustered vectors into a
    collection (FLAT: exact; HNSW and IVF_FLAT: approximate), then one-query latency through
    MilvusIndex.search with and without a filter keeping 1 % of the items, and recall@k against the
    in-process exact search on the same rows (FLAT's neighbours must be the same)."""
    from harness.index import IndexStore
    from harness.index.milvus import MilvusIndex
    from harness.metrics import Cosine
    from harness.search import ExactIndex
    from harness.serving.filters import CatalogFilter

    n, d = args.n, args.dim
    rng = np.random.default_rng(0)
    variants = {"FLAT": ({"index_type": "FLAT", "params": {}}, {}),
                "HNSW": ({"index_type": "HNSW", "params": {"M": 16, "efConstruction": 128}}, {"ef": args.ef}),
                "IVF_FLAT": ({"index_type": "IVF_FLAT", "params": {"nlist": int(4 * np.sqrt(n))}}, {"nprobe": args.nprobe})}
    out = []
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        store = IndexStore(tmp, "bench")
        store.commit(catalog_table(np.array([f"item-{i}" for i in range(n)]), rng), clustered(n, d, 0, centres=args.centres),
                     full=True)
        snap = store.read()
        exact, masks = ExactIndex(snap.vectors, Cosine()), CatalogFilter(snap.items)
        queries = clustered(args.queries, d, 1, centres=args.centres)
        conditions = {"no_filter": None, "filter_1pct": {"shard": "7"}}
        truth = {label: exact.search_rows(queries, args.k, None if c is None else np.flatnonzero(masks.mask(c)))[1]
                 for label, c in conditions.items()}
        for name in args.variants:
            index_params, search_params = variants[name]
            milvus = MilvusIndex(str(Path(tmp) / f"{name}.db"), store, {"_target_": "harness.metrics.Cosine"}, None,
                                 index_params)
            t0 = time.perf_counter()
            milvus.sync()
            build_s = time.perf_counter() - t0
            row = {"index": name, "index_params": index_params["params"], "search_params": search_params, "n": n,
                   "dim": d, "queries": args.queries, "sync_seconds": round(build_s, 2), "latency": {},
                   f"recall_at_{args.k}": {}}
            for label, condition in conditions.items():
                milvus.search(queries[:1], args.k, snap.version, condition, search_params=search_params)  # warm-up
                times, found = [], []
                for q in queries:
                    t0 = time.perf_counter()
                    _, rid = milvus.search(q[None], args.k, snap.version, condition, search_params=search_params)
                    times.append((time.perf_counter() - t0) * 1000)
                    found.append(np.searchsorted(snap.ids, rid[0]))
                row["latency"][label] = {"p50_ms": round(float(np.percentile(times, 50)), 1),
                                         "p99_ms": round(float(np.percentile(times, 99)), 1)}
                row[f"recall_at_{args.k}"][label] = round(float(np.mean(
                    [len(set(f) & set(t)) / args.k for f, t in zip(found, truth[label])])), 4)
                if name == "FLAT":
                    row.setdefault("same_neighbours_as_faiss_exact", {})[label] = round(float(np.mean(
                        [list(f) == list(t) for f, t in zip(found, truth[label])])), 4)
            print(row, flush=True)
            out.append(row)
            milvus.drop()
            milvus.client.close()
    return out


def bench_dedup(args) -> list[dict]:
    """harness.dedup over N clustered vectors with planted near-duplicates (a planted copy is its source
    plus noise 1e-3 of the clusters' spread): every item's k nearest through conf/search/<args.search>
    (cosine), pairs within the threshold grouped; time, peak memory, and the planted pairs found."""
    import resource

    from harness.dedup import find_pairs, pair_scores
    from harness.metrics import Cosine

    n, d = args.n, args.dim
    spec = OmegaConf.to_container(compose_config(f"search={args.search}").search.index, resolve=True)
    emb = clustered(n, d, 0, centres=args.centres)
    rng = np.random.default_rng(1)
    rows = rng.choice(n, 2 * args.planted, replace=False)
    sources, copies = rows[:args.planted], rows[args.planted:]
    emb[copies] = emb[sources] + rng.normal(scale=1e-3, size=(args.planted, d)).astype(np.float32)
    truth = np.full(n, -1, np.int64)
    truth[sources] = truth[copies] = np.arange(args.planted)
    gc.collect()
    before = rss_mib()
    t0 = time.perf_counter()
    dups = find_pairs(emb, Cosine(), args.k, None, instantiate(spec))
    search_s = time.perf_counter() - t0
    labels = dups.groups(args.threshold)
    total_s = time.perf_counter() - t0
    scores = pair_scores(labels, truth)
    row = {"n": n, "dim": d, "planted_pairs": args.planted, "k": args.k, "threshold": args.threshold,
           "search": {k: v for k, v in spec.items() if k != "_partial_"}, "seconds": round(total_s, 1),
           "search_seconds": round(search_s, 1), "candidate_pairs": len(dups.pairs),
           "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
           "rss_before_mib": round(before, 1), "planted_pair_recall": round(scores["pair_recall"], 4),
           "pair_precision": round(scores["pair_precision"], 4), "found_pairs": scores["found_pairs"]}
    print(row, flush=True)
    return [row]


def bench_index(args) -> list[dict]:
    """The served catalog index at catalog scale (harness.index): a full build of N clustered vectors
    with their items (ids, hashes, paths, a category, a price, a shard column) and the served search
    structure (conf/search/<args.search>.yaml, cosine), an update of 1 % (as many added as removed) with
    the structure moved in place, loading the current version as a served model does (every file's
    digest checked), and one-query latency through the served search with and without a filter that
    keeps 1 % of the items (filtered: exact on the matching items), recall@k against exact search."""
    from harness.index import IndexStore
    from harness.index.store import Snapshot, row_ids
    from harness.index.structures import Structures, refresh
    from harness.search import GroupedIndex
    from harness.serving.filters import CatalogFilter

    n, d, m = args.n, args.dim, max(1, int(args.n * args.update_fraction))
    spec = OmegaConf.to_container(compose_config(f"search={args.search}").search.index, resolve=True)
    metric = {"_target_": "harness.metrics.Cosine"}

    rng = np.random.default_rng(0)
    vectors = clustered(n, d, 0, centres=args.centres)
    items = catalog_table(np.array([f"item-{i}" for i in range(n)]), rng)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        store = IndexStore(tmp, "bench")
        t0 = time.perf_counter()
        version = store.commit(items, vectors, full=True)
        store_s = time.perf_counter() - t0
        structures = Structures(store, metric, spec)
        manifest = store.manifest(version)
        structures.open(Snapshot(version, items, vectors, manifest, row_ids(manifest)))  # trains and saves
        build_s = time.perf_counter() - t0
        added = catalog_table(np.array([f"new-{i}" for i in range(m)]), rng)
        removed = set(rng.choice(items["item_id"].to_numpy(), m, replace=False))
        fresh = clustered(m, d, 2, centres=args.centres)
        del vectors, items
        gc.collect()
        t0 = time.perf_counter()
        version = store.commit(added, fresh, removed, parent=version)
        commit_s = time.perf_counter() - t0
        moved = refresh(store, version, fresh)
        update_s = time.perf_counter() - t0
        assert moved == [structures.key], moved
        disk = {p.name: sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) for p in (Path(tmp) / "bench" / "segments").iterdir()}
        structure_bytes = sum(f.stat().st_size for f in structures.dir.glob("*.faiss"))
        before = rss_mib()
        t0 = time.perf_counter()
        snap = store.read()
        whole = structures.open(snap)
        index, filters = GroupedIndex(snap.vectors, structures.metric, whole=whole), CatalogFilter(snap.items)
        load_s = time.perf_counter() - t0
        served_mib = rss_mib() - before
        queries = clustered(args.queries, d, 1, centres=args.centres)
        latency, recall = {}, {}
        for label, condition in (("no_filter", None), ("filter_1pct", {"shard": "7"})):
            allowed = None if condition is None else filters.mask(condition)
            index.search(queries[:1], args.k, allowed=allowed)  # warm-up, not timed
            times, found = [], []
            for q in queries:
                t0 = time.perf_counter()
                allowed = None if condition is None else filters.mask(condition)
                found.append(index.search(q[None], args.k, allowed=allowed)[1][0])
                times.append((time.perf_counter() - t0) * 1000)
            rows = None if condition is None else np.flatnonzero(filters.mask(condition))
            truth = whole.search_rows(queries, args.k, rows)[1]  # exact, on the same rows
            recall[label] = round(float(np.mean([len(set(f) & set(t)) / args.k for f, t in zip(found, truth)])), 4)
            latency[label] = {"p50_ms": round(float(np.percentile(times, 50)), 1),
                              "p99_ms": round(float(np.percentile(times, 99)), 1)}
        kept = int(filters.mask({"shard": "7"}).sum())
    row = {"n": n, "dim": d, "search": {k: v for k, v in spec.items() if k != "_partial_"},
           "effective_nlist": int(whole.faiss.nlist) if hasattr(whole, "faiss") else None,
           "update": {"added": m, "removed": m}, "store_build_seconds": round(store_s, 2),
           "build_seconds": round(build_s, 2), "update_store_seconds": round(commit_s, 2),
           "update_seconds": round(update_s, 2), "update_vs_build": round(update_s / build_s, 4),
           "load_seconds": round(load_s, 2), "served_rss_mib": round(served_mib, 1), "items_served": len(snap.items),
           "segment_bytes": sorted(disk.values(), reverse=True), "structure_bytes_per_version": structure_bytes // 2,
           "filter_keeps": kept, "queries": args.queries, "latency": latency, f"recall_at_{args.k}": recall}
    print(row, flush=True)
    return [row]


def bench_scale(args) -> list[dict]:
    """engine=ray against the local engine on the same images, fresh stores, interleaved rounds.
    images/s leaves out Ray's start-up (connecting, starting workers, building their networks, the
    first batch), reported apart; per-worker rates feed the README's cost model."""
    variants = {"local": ["engine=local"]}
    for workers, cpus in args.ray:
        variants[f"ray_{workers}x{cpus}cpu"] = ["engine=ray", f"engine.workers={workers}", f"engine.num_cpus={cpus}"]
    base = ("dataset=products", f"dataset.root={args.catalog}", f"backbone={args.backbone}",
            f"dataset.limit={args.images or 'null'}")
    rates: dict[str, list[float]] = {}
    startup: dict[str, list[float]] = {}
    seen: dict[str, dict] = {}
    reference = None
    for r in range(args.rounds):
        for label, settings in variants.items():
            pipe = pipeline(*base, *settings)
            feats = harness_path(pipe, pipe.dataset.load().items["path"].tolist())
            m = feats.metrics()
            rates.setdefault(label, []).append(round(m["images_per_second"], 1))
            if "engine_startup_seconds" in m:
                startup.setdefault(label, []).append(round(m["engine_startup_seconds"], 1))
            if reference is None:
                reference = feats.emb
            seen[label] = {"images": int(feats.valid.sum()), "skipped": len(feats.skipped),
                           "nodes": m.get("ray_nodes"), "workers": m.get("ray_workers"),
                           "max_abs_diff_vs_first": float(np.abs(feats.emb - reference).max())}
            print(label, r, rates[label][-1], startup.get(label, [None])[-1], flush=True)
    median = {k: float(np.median(v)) for k, v in rates.items()}
    rows = []
    for label in variants:
        row = {"engine": label, "images_per_s": median[label], "all_rounds": rates[label],
               "vs_local": round(median[label] / median["local"], 3), **seen[label]}
        if label in startup:
            row["startup_seconds_median"] = float(np.median(startup[label]))
            workers = int(label.split("_")[1].split("x")[0])
            row["images_per_s_per_worker"] = round(median[label] / workers, 1)
        rows.append(row)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python experiments/bench.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="section", required=True)
    ex = sub.add_parser("extract", help="extraction images/s: plain fp32 loop vs the harness path")
    ex.add_argument("--backbones", nargs="+", default=["efficientnet_lite0", "resnet50", "vgg16"],
                    help="presets, or preset:key=value,... (e.g. open_clip:arch=ViT-B-16,pretrained=null)")
    ex.add_argument("--catalog", type=Path, default=DEFAULT_CATALOG)
    ex.add_argument("--images", type=int, default=1024, help="images per harness-path measurement")
    ex.add_argument("--plain-images", type=int, default=128, help="0: skip the study's per-image loop")
    ex.add_argument("--batch-size", type=int, default=8)
    ex.add_argument("--agreement", nargs="*", default=[], metavar="BACKBONE",
                    help="also each runtime's top-5 agreement with torch fp32 over the whole catalog")
    ex.add_argument("--compile", action="store_true", help="also runtime=inductor (TorchInductor)")
    ex.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians reported)")
    se = sub.add_parser("search", help="exact search queries/s per metric vs scikit-learn brute force")
    se.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000])
    se.add_argument("--dims", type=int, nargs="+", default=[1280, 4096])
    se.add_argument("--metrics", nargs="+", default=list(METRICS))
    se.add_argument("--queries", type=int, default=1000)
    se.add_argument("--sklearn-seconds", type=float, default=20.0)
    an = sub.add_parser("ann", help="IVF / HNSW vs exact on a large synthetic catalog")
    an.add_argument("--n", type=int, default=1_000_000)
    an.add_argument("--dim", type=int, default=1280)
    an.add_argument("--centres", type=int, default=10_000)
    an.add_argument("--queries", type=int, default=1000)
    an.add_argument("--kinds", nargs="+", default=["ivf"])
    an.add_argument("--nprobe", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    an.add_argument("--nlist", type=int, default=None)
    an.add_argument("--codec", default="SQ8", help="FAISS codec of the inverted lists: SQ8, Flat, PQ64, ...")
    an.add_argument("--rerank", type=int, default=4)
    an.add_argument("--ef-search", type=int, nargs="+", default=[16, 32, 64, 128, 256], help="hnsw: settings searched")
    gr = sub.add_parser("grid", help="the study's 18-run grid vs extracting once per backbone")
    gr.add_argument("--backbones", nargs="+", default=["vgg16", "vgg19", "resnet50"])
    gr.add_argument("--catalog", type=Path, default=DEFAULT_CATALOG)
    sv = sub.add_parser("serve", help="single-photo query latency (decode + extract + search)")
    sv.add_argument("--catalog", type=Path, default=DEFAULT_CATALOG)
    sv.add_argument("--queries", type=int, default=200)
    pk = sub.add_parser("peak", help="GEMM FLOP/s of this CPU and the images/s they allow each backbone")
    pk.add_argument("--backbones", nargs="+", default=["efficientnet_lite0", "resnet50", "vgg16"])
    pk.add_argument("--batch-size", type=int, default=8)
    pk.add_argument("--seconds", type=float, default=15.0)
    sc = sub.add_parser("scale", help="engine=ray vs local on the products catalog")
    sc.add_argument("--catalog", type=Path, default=DEFAULT_CATALOG)
    sc.add_argument("--backbone", default="efficientnet_lite0")
    sc.add_argument("--images", type=int, default=0, help="0: the whole catalog")
    sc.add_argument("--ray", type=lambda v: tuple(int(x) for x in v.split("x")), nargs="+", default=[(2, 1), (1, 1)],
                    metavar="WORKERSxCPUS", help="Ray variants, e.g. 2x1 (two workers of one CPU each)")
    sc.add_argument("--rounds", type=int, default=2)
    dc = sub.add_parser("decode", help="JPEG DCT-scaled vs full decoding, large photos and thumbnails")
    dc.add_argument("--large", type=Path, default=Path("/tmp/fashion-products-1080x1440"),
                    help="a copy made by experiments/make_large_catalog.py")
    dc.add_argument("--catalog", type=Path, default=DEFAULT_CATALOG, help="the thumbnails it was made from")
    dc.add_argument("--backbones", nargs="+", default=["efficientnet_lite0", "resnet50"])
    dc.add_argument("--images", type=int, default=512)
    dc.add_argument("--rounds", type=int, default=3)
    dc.add_argument("--quality", action="store_true", help="also P@5 and top-5 agreement on the whole large copy")
    dc.add_argument("--quality-precisions", nargs="+", default=["auto", "fp32"],
                    help="backbone.precision values the quality part runs under")
    ix = sub.add_parser("index", help="the served catalog index: build, 1 % update, load, query latency")
    ix.add_argument("--n", type=int, default=1_000_000)
    ix.add_argument("--dim", type=int, default=1280)
    ix.add_argument("--centres", type=int, default=10_000)
    ix.add_argument("--update-fraction", type=float, default=0.01)
    ix.add_argument("--queries", type=int, default=200)
    ix.add_argument("--search", default="ivf", help="the served structure: conf/search/<name>.yaml")
    ix.add_argument("--tmp", default=None, help="where the index is written (default: the system's temp dir)")
    dd = sub.add_parser("dedup", help="harness.dedup over 1M x 1280 clustered vectors with planted duplicates")
    dd.add_argument("--n", type=int, default=1_000_000)
    dd.add_argument("--dim", type=int, default=1280)
    dd.add_argument("--centres", type=int, default=10_000)
    dd.add_argument("--planted", type=int, default=10_000)
    dd.add_argument("--threshold", type=float, default=1e-3)
    dd.add_argument("--search", default="ivf")
    mv = sub.add_parser("milvus", help="index.backend=milvus on Milvus Lite: sync, latency, recall vs exact")
    mv.add_argument("--n", type=int, default=100_000)
    mv.add_argument("--dim", type=int, default=1280)
    mv.add_argument("--centres", type=int, default=1000)
    mv.add_argument("--queries", type=int, default=200)
    mv.add_argument("--variants", nargs="+", default=["FLAT", "HNSW", "IVF_FLAT"])
    mv.add_argument("--ef", type=int, default=64)
    mv.add_argument("--nprobe", type=int, default=16)
    mv.add_argument("--tmp", default=None, help="where the index and Milvus Lite's files go")
    sg = sub.add_parser("segment", help="resize / roi / GrabCut / detector on composite queries; segment vs roi on the studio")
    sg.add_argument("--catalog", type=Path, default=DEFAULT_CATALOG)
    sg.add_argument("--queries", type=Path, default=Path("/tmp/fashion-composite"),
                    help="a set made by experiments/composite_queries.py")
    sg.add_argument("--detect-weights", default="coco", help="coco, or random where they cannot be read")
    sg.add_argument("--detect-arch", default="fasterrcnn_mobilenet_v3_large_320_fpn",
                    help="the detector run over the whole catalog (Mask R-CNN is timed on a few photos)")
    sg.add_argument("--detect-min-size", type=int, default=320)
    sg.add_argument("--skip-detect", action="store_true")
    i8 = sub.add_parser("int8", help="OpenVINO int8 (NNCF) vs fp32 and bf16 through the harness")
    i8.add_argument("--catalog", type=Path, default=DEFAULT_CATALOG)
    i8.add_argument("--backbones", nargs="+", default=["efficientnet_lite0", "resnet50"])
    i8.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "int8"])
    i8.add_argument("--images", type=int, default=512)
    i8.add_argument("--rounds", type=int, default=3)
    i8.add_argument("--max-isa", help="e.g. AVX2: run in a child process with oneDNN limited to that ISA")
    i8.add_argument("--quality", action="store_true", help="also products 5-fold P@5 and top-5 agreement")
    fz = sub.add_parser("frozen", help="experiment=frozen_best and its steps, products 5-fold, real weights")
    fz.add_argument("--catalog", type=Path, default=DEFAULT_CATALOG)
    fz.add_argument("--rows", nargs="*", help="only the rows whose name contains one of these")
    ft = sub.add_parser("finetune", help="train=metric per fold vs LDA, products 5-fold, real lite0 weights")
    ft.add_argument("--catalog", type=Path, default=DEFAULT_CATALOG)
    ft.add_argument("--rows", nargs="*", help="only the rows whose name contains one of these")
    ft.add_argument("--steps", type=int, default=40, help="batches per epoch (train.steps_per_epoch)")
    te = sub.add_parser("train_engines", help="train/engine=local vs ray on one products training")
    te.add_argument("--catalog", type=Path, default=DEFAULT_CATALOG)
    te.add_argument("--engines", nargs="*", default=["local", "ray"])
    te.add_argument("--steps", type=int, default=8, help="batches per epoch (train.steps_per_epoch)")
    for p in sub.choices.values():
        p.add_argument("--k", type=int, default=5)
        p.add_argument("--out", type=Path, default=ROOT / "experiments" / "bench")
        p.add_argument("--name", help="JSON file name (default: the section's)")
    args = parser.parse_args(argv)
    sections = {"extract": bench_extract, "search": bench_search, "ann": bench_ann, "grid": bench_grid,
                "serve": bench_serve, "peak": bench_peak, "scale": bench_scale, "decode": bench_decode,
                "int8": bench_int8, "segment": bench_segment, "index": bench_index,
                "milvus": bench_milvus, "dedup": bench_dedup, "frozen": bench_frozen,
                "finetune": bench_finetune, "train_engines": bench_train_engines}
    rows = sections[args.section](args)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"section": args.section, "machine": machine(), "date": time.strftime("%Y-%m-%d"), "rows": rows}
    path = args.out / f"{args.name or args.section}.json"
    path.write_text(json.dumps(result, indent=2))
    print(pd.DataFrame(rows).to_string(index=False))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
