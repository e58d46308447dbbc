"""The compute device of a worker process: one model computation at a time, and batches
sized for it (on a GPU the largest that fits, halved on out-of-memory).

A worker runs two task threads (``cluster``): while one task holds the device lock and
runs the model, the other reads, decodes and writes its partition, so I/O overlaps
inference without two models fighting over the same cores or GPU memory.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from batchml.errors import BatchmlError

CPU_BATCH = 512  # beyond this the CPU gains little and activations cost hundreds of MB
GPU_START_BATCH = 8192  # 32x32 images: halved on out-of-memory until it fits

_LOCK = threading.Lock()
_FITTING: dict[str, int] = {}  # model version -> the largest batch that fitted in this process


def device_lock() -> threading.Lock:
    """Held around inference and training: one model computation at a time per process."""
    return _LOCK


_INFO: dict | None = None


def training_precision(precision: str) -> str:
    """The Keras dtype policy to train in: a recipe's ``mixed_bfloat16`` becomes ``float32`` on a CPU
    without bfloat16 instructions (AVX512-BF16 or AMX), where it is emulated and many times slower."""
    if precision != "mixed_bfloat16" or device_info()["device"] != "cpu" or cpu_has_bfloat16():
        return precision
    print("train: this CPU has no bfloat16 instructions (AVX512-BF16 or AMX): training in float32, "
          "as fast here and no less accurate", file=sys.stderr, flush=True)
    return "float32"


def cpu_has_bfloat16() -> bool:
    """Whether the CPU computes bfloat16 natively (Linux: its flags); True where it cannot be told."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def device_info() -> dict:
    """Where this process computes: Keras backend, device kind (``gpu`` or ``cpu``), device
    name (``NVIDIA H200``, ``cpu``) and framework versions. Asked once per process; imports
    the framework, so call it only where the model runs."""
    global _INFO
    if _INFO is None:
        import keras

        backend = keras.backend.backend()
        name, versions = _FRAMEWORKS[backend]()
        _INFO = {"backend": backend, "device": "cpu" if name == "cpu" else "gpu", "device_name": name,
                 "versions": {"keras": keras.__version__, **versions},
                 "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    return _INFO


def _jax_device() -> tuple[str, dict]:
    import jax
    import jaxlib

    d = jax.devices()[0]
    return ("cpu" if d.platform == "cpu" else d.device_kind), {"jax": jax.__version__, "jaxlib": jaxlib.__version__}


def _torch_device() -> tuple[str, dict]:
    import torch

    on_gpu = torch.cuda.is_available()
    return (torch.cuda.get_device_name(torch.cuda.current_device()) if on_gpu else "cpu"), \
        {"torch": torch.__version__, "cuda": torch.version.cuda}


def _tensorflow_device() -> tuple[str, dict]:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "gpu") if gpus else "cpu"
    return name, {"tensorflow": tf.__version__}


_FRAMEWORKS = {"jax": _jax_device, "torch": _torch_device, "tensorflow": _tensorflow_device}


def device_label(info: dict) -> str:
    """``gpu NVIDIA H200 (jax)`` or ``cpu (tensorflow)``."""
    where = f"gpu {info['device_name']}" if info["device"] == "gpu" else "cpu"
    return f"{where} ({info['backend']})"


def has_gpu() -> bool:
    """Whether the active Keras backend computes on a GPU in this process."""
    return device_info()["device"] == "gpu"


def cpu_fallback_warning(info: dict, gpus_visible: int) -> str | None:
    """The warning for a process that sees GPUs but computes on its CPU, naming the fix."""
    if not gpus_visible or info["device"] == "gpu":
        return None
    return (f"{gpus_visible} GPU(s) visible, but Keras computes on the CPU with backend {info['backend']!r}: "
            "install a GPU backend (pip install 'batchml[gpu]', JAX with CUDA) and use --backend auto or jax; "
            "--require-gpu makes this an error")


def is_out_of_memory(exc: BaseException) -> bool:
    """TensorFlow's ResourceExhaustedError, JAX's RESOURCE_EXHAUSTED, torch's OutOfMemoryError."""
    text = f"{type(exc).__name__}: {exc}"
    return any(s in text for s in ("ResourceExhausted", "RESOURCE_EXHAUSTED", "OutOfMemory", "out of memory"))


def start_batch(requested: int | None, model_key: str) -> int:
    """The batch size to start a partition with: the requested one, else what fitted last
    time in this process, else the device's default."""
    if requested:
        return min(requested, _FITTING.get(model_key, requested))
    if model_key in _FITTING:
        return _FITTING[model_key]
    return GPU_START_BATCH if has_gpu() else CPU_BATCH


def predict_fitting(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch: int,
                    model_key: str) -> tuple[np.ndarray, int]:
    """``predict`` over ``x`` in chunks of ``batch``, halving it on out-of-memory.

    Returns (probabilities, the batch size that worked); that size is remembered for the
    model in this process so later partitions do not fail first.
    """
    out, i = [], 0
    while i < len(x):
        try:
            out.append(np.asarray(predict(x[i: i + batch]), dtype=np.float32))
            i += batch
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            if batch == 1:
                raise BatchmlError(f"model {model_key} does not fit the device's memory even one image at a time") \
                    from exc
            batch //= 2
            _FITTING[model_key] = batch
    return np.concatenate(out), batch
