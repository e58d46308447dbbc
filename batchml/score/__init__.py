"""A dataset or a prefix of images and a model version in: one Dask task per partition (``scoring``).
Runs out: predictions, mergeable statistics, failure-case candidates (``failures``) and, last, the run's manifest."""
