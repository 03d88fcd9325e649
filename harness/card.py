"""A run's result card: what it was measured on, its scores with intervals, and what it costs.

    card = result_card(pipe, catalog, folds, result, metrics, records)   # a dict: card.json
    card_markdown(card), card_summary(card)                              # its table; its few key lines

Scores are the run's precision at k per level and same-product Recall@k, each with a bootstrap 95 %
interval over the queries (2,000 seeded resamples of the per-query values). Cost: the network's
parameters, the feature dimension, the bytes one catalog item's vector takes in the index, images/s of
this run's extraction (absent when every feature came from the store) on this machine (its CPU flags,
or GPU), and the p50 of one query's search over the first fold's catalog (100 single queries).
"""
from __future__ import annotations

import time

import numpy as np
import pandas as pd

from harness.machine import describe_machine, machine
from harness.metrics.retrieval import bootstrap_interval
from harness.search import GroupedIndex

LATENCY_QUERIES = 100


def score_names(metrics: dict, levels: list[str], k: int) -> list[str]:
    names = [f"{level}_precision_at_{k}" for level in levels]
    names += sorted((m for m in metrics if m.startswith("product_recall_at_") and m[18:].isdigit()), key=lambda m: int(m[18:]))
    return [n for n in names if n in metrics]


def query_p50_ms(pipe, emb: np.ndarray, folds, result) -> float | None:
    """Median wall time of one query's search (k nearest) over the first fold's catalog, in ms."""
    fold = folds[0]
    if not len(fold.query_idx) or not len(fold.ref_idx):
        return None
    space = result.projections[0].transform(emb) if result.projections else emb
    index = GroupedIndex(space[fold.ref_idx], pipe.metric, index=pipe.index)
    k = min(int(pipe.cfg.k), len(fold.ref_idx))
    index.search(space[fold.query_idx[:1]], k)  # a lazily built structure is built here, not timed
    times = []
    for q in fold.query_idx[:LATENCY_QUERIES]:
        start = time.perf_counter()
        index.search(space[q:q + 1], k)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def parameters(backbone) -> int | None:
    """The network's parameters, counted on its architecture built on the meta device (no weights read,
    no memory: a run whose features all came from the store never builds the network)."""
    import torch

    try:
        with torch.device("meta"):
            return int(sum(p.numel() for p in backbone.skeleton().parameters()))
    except Exception:  # an architecture that cannot be built without its weights
        return None


def result_card(pipe, catalog, emb, folds, result, metrics: dict, records) -> dict:
    cfg = pipe.cfg
    per_query = [t for name, t in result.artifacts.items() if name.startswith("per_query") and isinstance(t, pd.DataFrame)]
    scores = {}
    for name in score_names(metrics, catalog.levels, int(cfg.k)):
        table = next((t for t in per_query if name in t), None)
        if table is not None and len(table):
            value, low, high = bootstrap_interval(table[name].to_numpy())
            scores[name] = {"value": float(metrics[name]), "low": low, "high": high, "queries": len(table)}
        else:
            scores[name] = {"value": float(metrics[name])}
    dim = int(metrics["feature_dim"])
    return {
        "run": pipe.run_name,
        "dataset": {r.context: {"name": r.name, "digest": r.digest, "rows": len(r.table)} for r in records},
        "protocol": {"name": type(pipe.protocol).__name__, "folds": len(folds)},
        "model": {"backbone": str(cfg.backbone.get("arch")), "weights": str(cfg.backbone.get("weights")),
                  "layer": str(cfg.layer.name), "preprocess": str(cfg.preprocess._target_).rsplit(".", 1)[-1],
                  "projection": type(pipe.projection).__name__ if pipe.projection is not None else "none",
                  "metric": type(pipe.metric).__name__, "runtime": str(cfg.runtime._target_).rsplit(".", 1)[-1],
                  "search": str(cfg.search.index._target_).rsplit(".", 1)[-1]},
        "scores": scores,
        "cost": {"parameters": parameters(pipe.backbone), "feature_dim": dim, "bytes_per_item": dim * 4,
                 "images_per_second": metrics.get("images_per_second"),
                 "query_p50_ms": query_p50_ms(pipe, emb, folds, result), "machine": machine()},
    }


def _fmt(score: dict) -> str:
    if "low" in score:
        return f"{score['value']:.4f} [{score['low']:.4f}, {score['high']:.4f}]"
    return f"{score['value']:.4f}"


def card_summary(card: dict) -> str:
    """The few lines the MLflow UI shows as the run's description."""
    m, c, d = card["model"], card["cost"], card["dataset"].get("catalog", {})
    lines = [f"**{m['backbone']}** ({m['weights']}) · {m['layer']} · {m['preprocess']} · {m['projection']} · "
             f"{m['metric']} on {d.get('name')} [{d.get('digest')}], {card['protocol']['name']} "
             f"({card['protocol']['folds']} fold(s))"]
    lines += [f"- {name}: {_fmt(s)}" for name, s in list(card["scores"].items())[:4]]
    speed = f"{c['images_per_second']:.1f} img/s" if c["images_per_second"] else "features from the store"
    p50 = f"{c['query_p50_ms']:.2f} ms" if c["query_p50_ms"] is not None else "n/a"
    lines.append(f"- cost: {c['parameters'] or 'n/a'} parameters, {c['feature_dim']}-d ({c['bytes_per_item']} B/item), "
                 f"{speed}, query p50 {p50} on {describe_machine(c['machine'])}")
    return "\n".join(lines)


def card_markdown(card: dict) -> str:
    rows = [f"| {name} | {_fmt(s)} |" for name, s in card["scores"].items()]
    return "\n".join([f"# {card['run']}", "", card_summary(card), "", "| score | value [95 % bootstrap interval] |",
                      "|---|---|", *rows, ""])
