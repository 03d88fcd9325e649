from harness.evaluators.base import EvalContext, Evaluator
from harness.evaluators.precision import PrecisionAtK

__all__ = ["EvalContext", "Evaluator", "PrecisionAtK"]
