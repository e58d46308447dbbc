"""batchml: distributed batch scoring and monitoring of image classifiers.

The packages follow the data flow: ``data`` (sources to partitions), ``train`` (partitions to
model versions), ``score`` (partitions and a model to runs), ``monitoring`` (runs to tables),
``serve`` (the dashboard). Beside them the foundations every stage shares: ``layout`` (every
path under the store), ``records`` (the JSON contracts), ``store``, ``registry``, ``stats``,
``cluster``, ``backend``, ``device``, ``progress``, ``errors``; and the entry points ``cli``
and ``demo``.
"""

__version__ = "0.1.0"
