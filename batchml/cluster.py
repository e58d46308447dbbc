"""The one place batchml connects to Dask (DESIGN.md, "Compute").

- a scheduler address given: connect to it (TLS when certificates are given);
- otherwise, GPUs visible: ``dask_cuda.LocalCUDACluster``, one worker per GPU, each
  pinned to its own device;
- otherwise: ``distributed.LocalCluster`` with worker processes on the CPU.

Every worker then sets up its Keras backend once, through a worker plugin, before any
batchml task imports Keras.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import dask
from distributed import Client, LocalCluster, WorkerPlugin
from distributed.security import Security

from batchml.backend import DEFAULT_BACKEND, configure_backend
from batchml.errors import BatchmlError


@dataclass(frozen=True)
class ClusterConfig:
    scheduler: str | None = None  # tcp://host:8786 or tls://host:8786; None: start a local one
    workers: int | None = None  # local cluster size; default one per GPU, else 1
    # tasks at a time per worker: one runs the model (Keras uses all its cores; batchml.device
    # keeps it to one) while the other reads, decodes and writes
    threads_per_worker: int = 2
    backend: str = DEFAULT_BACKEND  # Keras backend on the workers
    use_gpus: bool = True  # False: a CPU LocalCluster even where GPUs are visible
    tls_ca_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    # a local cluster's Dask dashboard shows worker logs and task stacks without login: loopback only
    dashboard_address: str = "127.0.0.1:0"


class KerasBackendPlugin(WorkerPlugin):
    """Runs on every worker (present and future) before it takes batchml tasks."""

    name = "batchml-keras-backend"

    def __init__(self, backend: str) -> None:
        self.backend = backend

    def setup(self, worker) -> None:
        configure_backend(self.backend)
        import keras  # noqa: F401  (seconds of framework import paid once at start-up, not by the first task)


def count_gpus() -> int:
    """GPUs this process may use, without importing a deep-learning framework."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return 0
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    gpus = [line for line in out.stdout.splitlines() if line.startswith("GPU ")]
    return min(len(gpus), len(visible.split(","))) if visible else len(gpus)


def _security(cfg: ClusterConfig) -> Security | None:
    if not (cfg.tls_ca_file or cfg.tls_cert or cfg.tls_key):
        return None
    return Security(
        tls_ca_file=cfg.tls_ca_file,
        tls_client_cert=cfg.tls_cert,
        tls_client_key=cfg.tls_key,
        require_encryption=True,
    )


def _worker_environ(workers: int) -> dict[str, str]:
    """Environment for local worker processes, on top of Dask's own."""
    n = str(max(1, (os.cpu_count() or 1) // workers))
    return {
        **dask.config.get("distributed.nanny.pre-spawn-environ"),
        # Dask pins OMP/MKL/OpenBLAS to 1 thread for many small tasks; a worker here runs one
        # model task at a time, so it gets its share of the cores
        "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n,
        # each partition allocates tens of MB of pixels and activations; served from the heap
        # (glibc's default once such a block was freed) they fragment it and the worker grows
        # with every partition (measured: 950 MB after 40,000 images, 3,060 MB after 200,000)
        "MALLOC_MMAP_THRESHOLD_": "1048576",
    }


def _local_cluster(cfg: ClusterConfig):
    gpus = count_gpus() if cfg.use_gpus else 0
    cuda_cluster = None
    if gpus:
        try:
            import dask_cuda

            cuda_cluster = dask_cuda.LocalCUDACluster
        except ImportError:
            warnings.warn(
                f"{gpus} GPU(s) visible but dask-cuda is not installed "
                "(pip install 'batchml[gpu]'); using CPU workers",
                stacklevel=3,
            )
    workers = cfg.workers or (gpus if cuda_cluster else 1)
    # The workers' statistical profiler samples every thread's stack many times a second:
    # on a couple of cores that is CPU and GIL time taken from the model.
    with dask.config.set({"distributed.nanny.pre-spawn-environ": _worker_environ(workers),
                          "distributed.worker.profile.enabled": False}):
        if cuda_cluster:  # one worker per GPU, each pinned to its device by CUDA_VISIBLE_DEVICES
            return cuda_cluster(n_workers=workers, threads_per_worker=cfg.threads_per_worker,
                                dashboard_address=cfg.dashboard_address, silence_logs=logging.WARNING)
        return LocalCluster(n_workers=workers, threads_per_worker=cfg.threads_per_worker, processes=True,
                            dashboard_address=cfg.dashboard_address, silence_logs=logging.WARNING)


@contextmanager
def connect(cfg: ClusterConfig) -> Iterator[Client]:
    """A Dask client for ``cfg``, with the Keras backend plugin on every worker."""
    cluster = None
    try:
        if cfg.scheduler:
            if cfg.scheduler.startswith("tls://") and not (cfg.tls_ca_file and cfg.tls_cert and cfg.tls_key):
                raise BatchmlError(f"the scheduler {cfg.scheduler} speaks TLS: pass --tls-ca-file, --tls-cert "
                                   "and --tls-key (the certificates the cluster was started with)")
            client = Client(cfg.scheduler, security=_security(cfg), timeout="30s")
        else:
            cluster = _local_cluster(cfg)
            client = Client(cluster)
    except OSError as exc:
        raise BatchmlError(
            f"cannot reach the Dask scheduler {cfg.scheduler!r}: {exc}. Check the address "
            "(tcp://host:8786, or tls:// with --tls-ca-file/--tls-cert/--tls-key)."
        ) from exc
    try:
        client.register_plugin(KerasBackendPlugin(cfg.backend))
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
