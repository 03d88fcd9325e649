"""Where `train=metric` runs its loop (`train/engine=`): `local.py` in this process, `ray.py` on Ray
Train's data-parallel workers. Both run `MetricLearning.loop` with a `base.Session`."""
