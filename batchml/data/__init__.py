"""Images in: class folders, tar archives, CIFAR batches or a prefix of raw files (``sources``, ``images``).
Partitions out: ``ingest`` writes a dataset's Parquet partitions and manifest; ``datasets`` and ``inputs`` read them."""
