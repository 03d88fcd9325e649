"""Search by words, scored like search by photo (the category-to-product task of Marqo's fashion benchmark)."""
from __future__ import annotations

import numpy as np

from harness.evaluators.base import EvalContext, Evaluator


class TextPrecision(Evaluator):
    """{level}_text_precision_at_{k}: each label of a level becomes a prompt (`template`, e.g. "a photo of
    Topwear"); the share of its k nearest catalog items that carry that label, averaged over the level's
    labels (each label once; a fold scores the labels its catalog holds), then over folds. Needs a backbone
    with a text tower (OpenCLIP)."""
    needs_text = True

    def __init__(self, template: str = "a photo of {label}"):
        if "{label}" not in template:
            raise ValueError("evaluator.text.template must contain {label}")
        self.template = template

    def prompts(self, items, levels) -> dict[tuple[str, str], str]:
        products = items[~items["distractor"].astype(bool)] if "distractor" in items else items
        return {(level, label): self.template.format(label=label)
                for level in levels for label in sorted(set(products[level])) if label != ""}

    def text_queries(self, items, levels) -> list[str]:
        return list(self.prompts(items, levels).values())

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        position = {prompt: i for i, prompt in enumerate(ctx.text_prompts)}
        out = {}
        for level in ctx.levels:
            labels = ctx.items[level].to_numpy(dtype=object)
            per_fold = []
            for fold_id, _, refs in ctx.folds:
                rows, present = ctx.text_rows[fold_id], set(labels[refs])
                scores = [float(np.mean(labels[rows[position[prompt]]] == label))
                          for (lv, label), prompt in self.prompts(ctx.items, [level]).items() if label in present]
                per_fold.append(np.mean(scores) if scores else float("nan"))
            out[f"{level}_text_precision_at_{ctx.k}"] = float(np.mean(per_fold))
        return out
