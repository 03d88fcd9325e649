"""Fine-tuning a backbone on the catalog's labels (`train=metric`): `metric.py` the training,
`folds.py` one training per fold (its catalog rows only) and one for the served catalog."""
from harness.train.metric import MetricLearning, TrainResult

__all__ = ["MetricLearning", "TrainResult"]
