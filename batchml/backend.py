"""Keras backend set-up for one process, done once before Keras is first imported.

Keras 3 picks its backend at import time from ``KERAS_BACKEND``; the GPU memory knobs
below stop a worker from reserving every GPU's memory (dask-cuda already limits each
worker to its own device through ``CUDA_VISIBLE_DEVICES``).
"""

from __future__ import annotations

import os
import sys
import warnings

BACKENDS = ("tensorflow", "jax", "torch")
DEFAULT_BACKEND = "tensorflow"  # the fastest Keras backend on these CPUs


def configure_backend(backend: str = DEFAULT_BACKEND) -> str:
    """Select ``backend`` for this process; returns the backend Keras will actually use."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown Keras backend {backend!r}: use one of {', '.join(BACKENDS)}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter
    os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if "keras" in sys.modules:
        import keras

        active = keras.backend.backend()
        if active != backend:
            warnings.warn(
                f"Keras was already imported with backend {active!r} in this process; "
                f"{backend!r} takes effect in a new process",
                stacklevel=2,
            )
        return active
    os.environ["KERAS_BACKEND"] = backend
    return backend
