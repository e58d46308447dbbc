"""Keras backend and GPU set-up for one process, done once before Keras is first imported.

Keras 3 picks its backend at import time from ``KERAS_BACKEND``. ``auto`` picks one that
computes on this process's GPU where one is visible (JAX with its CUDA plugin, else a CUDA
build of PyTorch, else TensorFlow), and TensorFlow on the CPU, the fastest there.

A GPU worker owns one GPU. dask-cuda hands each worker a rotated ``CUDA_VISIBLE_DEVICES``
("2,3,0,1": its own device first), but TensorFlow and JAX open a context on every visible
GPU, so N workers would hold N x N contexts (and fail under EXCLUSIVE_PROCESS mode).
``own_gpu_only`` narrows the list to the first entry before any framework touches CUDA,
and ``pin_framework`` tells the framework the same, in case CUDA was initialised earlier.
Nothing here imports a framework until asked to.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BACKENDS = ("auto", "tensorflow", "jax", "torch")
DEFAULT_BACKEND = "auto"
# what the frameworks' C++ start-up prints straight to stderr, below any Python logging setting
STARTUP_NOISE = (
    "All log messages before absl::InitializeLog()", "oneDNN custom operations are on",
    "This TensorFlow binary is optimized", "To enable the following instructions",
    "Unable to register cuDNN factory", "Unable to register cuFFT factory", "Unable to register cuBLAS factory",
    "computation placer already registered", "Could not find cuda drivers", "TF-TRT Warning",
    "failed call to cuInit",
)


def visible_gpu_ids() -> list[str]:
    """The GPUs this process may use (indices or UUIDs, in ``CUDA_VISIBLE_DEVICES`` order),
    found with ``nvidia-smi`` rather than a framework, which would claim them."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return []
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    found = [str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU ")]
    if visible is None:
        return found
    return [v.strip() for v in visible.split(",") if v.strip()][: len(found)]


def count_gpus() -> int:
    return len(visible_gpu_ids())


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a dotted name whose parent package is missing
        return False


def torch_has_cuda() -> bool:
    """Whether the installed PyTorch is a CUDA build (its CUDA library ships beside it)."""
    spec = importlib.util.find_spec("torch") if installed("torch") else None
    return bool(spec and spec.origin) and any((Path(spec.origin).parent / "lib").glob("libtorch_cuda*"))


def jax_has_cuda() -> bool:
    """Whether JAX's CUDA plugin is installed (``jax[cuda12]`` or ``jax[cuda13]``)."""
    return installed("jax") and any(installed(f"jax_cuda{v}_plugin") or installed(f"jax_plugins.xla_cuda{v}")
                                    for v in (12, 13))


def resolve_backend(requested: str, gpu_visible: bool) -> str:
    """The Keras backend ``requested`` stands for in a process that does or does not see a GPU."""
    if requested not in BACKENDS:
        raise ValueError(f"unknown Keras backend {requested!r}: use one of {', '.join(BACKENDS)}")
    if requested != "auto":
        return requested
    if gpu_visible:  # without a GPU build of either, the device check warns and names the fix
        if jax_has_cuda():
            return "jax"
        if torch_has_cuda():
            return "torch"
    for backend in ("tensorflow", "jax", "torch"):
        if installed(backend):
            return backend
    raise ValueError("no Keras backend is installed: pip install tensorflow-cpu (CPU) or 'batchml[gpu]' (GPU)")


def own_gpu_only() -> str | None:
    """Narrow ``CUDA_VISIBLE_DEVICES`` to this process's own GPU, the first listed; returns it.

    JAX is told the same by ``JAX_CUDA_VISIBLE_DEVICES`` (device 0 of what CUDA shows).
    """
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if not visible or visible[0] == "-1":
        return None
    os.environ["CUDA_VISIBLE_DEVICES"] = visible[0]
    os.environ["JAX_CUDA_VISIBLE_DEVICES"] = "0"
    return visible[0]


def configure_backend(backend: str = DEFAULT_BACKEND, gpu_visible: bool = False) -> str:
    """Select ``backend`` for this process; returns the backend Keras will actually use."""
    backend = resolve_backend(backend, gpu_visible)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter
    # take GPU memory as needed, not the whole card at start-up
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


def pin_framework(backend: str) -> None:
    """Tell the framework to use GPU 0 of what CUDA shows (the process's own) and to grow its
    memory as needed; a no-op without GPUs. Imports the framework."""
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            tf.config.set_visible_devices(gpus[:1], "GPU")
            tf.config.experimental.set_memory_growth(gpus[0], True)
    elif backend == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_device(0)
    # JAX: JAX_CUDA_VISIBLE_DEVICES, set by own_gpu_only before JAX starts


@contextmanager
def filtered_stderr(noise: tuple[str, ...] = STARTUP_NOISE) -> Iterator[None]:
    """Hold what is written to file descriptor 2 (C++ and Python alike) and pass on every
    line but the start-up noise: real warnings still show, after the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held.read().decode(errors="replace").splitlines(keepends=True)
                    if not any(n in line for n in noise)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()


def import_keras():
    """``import keras`` (and its framework) without the framework's start-up chatter."""
    with filtered_stderr():
        import keras
    return keras
