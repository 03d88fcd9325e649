from harness.evaluators.base import EvalContext, Evaluator
from harness.evaluators.precision import PrecisionAtK
from harness.evaluators.ranking import Ranking

__all__ = ["EvalContext", "Evaluator", "PrecisionAtK", "Ranking"]
