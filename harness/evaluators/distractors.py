"""How often non-fashion distractors (dataset.distractors) reach the top k."""
from __future__ import annotations

from harness.evaluators.base import EvalContext, Evaluator


class DistractorRate(Evaluator):
    """distractor_rate_at_{k}: the share of all returned top-k neighbours that are distractors."""
    lower_is_better = ("distractor_rate",)

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        if "distractor" not in ctx.items:
            return {}
        is_distractor = ctx.items["distractor"].to_numpy(bool)
        found = ctx.indices >= 0
        return {f"distractor_rate_at_{ctx.k}": float(is_distractor[ctx.indices[found]].mean()) if found.any() else 0.0}
