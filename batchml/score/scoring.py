"""Scoring's public names, where callers (the CLI, the jobs, the tests) import them: a run on
the client is ``batchml.score.run``, a partition on a worker ``batchml.score.partition``."""

from batchml.score.partition import RunSpec, model_loads, score_partition, worker_model, worker_scorer
from batchml.score.run import ScoreConfig, check_config, committed_already, score, score_unless_committed

__all__ = ["RunSpec", "ScoreConfig", "check_config", "committed_already", "model_loads", "score", "score_partition",
           "score_unless_committed", "worker_model", "worker_scorer"]
