"""The one place batchml connects to Dask.

- a scheduler address given: connect to it (TLS when certificates are given);
- otherwise, GPUs visible: one worker per GPU, each owning its device and advertising the
  Dask resource ``GPU=1``: ``dask_cuda.LocalCUDACluster`` where dask-cuda is installed,
  else worker processes pinned to GPU i by ``CUDA_VISIBLE_DEVICES``;
- otherwise: ``distributed.LocalCluster`` with worker processes on the CPU.

Every worker then pins itself to its own GPU, picks its Keras backend and records where it
computes, through a worker plugin, before it takes a batchml task; the client checks those
records and warns (or, with ``require_gpu``, fails) when a worker that sees a GPU computes
on its CPU.
"""

from __future__ import annotations

import copy
import functools
import gc
import hashlib
import logging
import os
import socket
import sys
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dask
from distributed import Client, LocalCluster, WorkerPlugin
from distributed.core import Status
from distributed.security import Security
from distributed.system import MEMORY_LIMIT

from batchml.backend import (
    DEFAULT_BACKEND,
    configure_backend,
    filtered_stderr,
    import_keras,
    installed,
    own_gpu_only,
    pin_framework,
    visible_gpu_ids,
)
from batchml.errors import BatchmlError


@dataclass(frozen=True)
class ClusterConfig:
    scheduler: str | None = None  # tcp://host:8786 or tls://host:8786; None: start a local one
    workers: int | None = None  # local cluster size; default one per GPU, else 1
    # tasks at a time per worker: one runs the model (Keras uses all its cores; batchml.device
    # keeps it to one) while the other reads, decodes and writes
    threads_per_worker: int = 2
    backend: str = DEFAULT_BACKEND  # Keras backend on the workers; auto: one that uses their GPU
    use_gpus: bool = True  # False: a CPU LocalCluster even where GPUs are visible
    require_gpu: bool = False  # fail, rather than warn, when a worker computes on its CPU
    tls_ca_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    # a local cluster's Dask dashboard shows worker logs and task stacks without login: loopback only
    dashboard_address: str = "127.0.0.1:0"


# Dask resources: a GPU worker advertises GPU=1. Training takes the whole GPU; a scoring task
# half, so two partitions of a run share a worker (one reads and decodes while the other holds
# the device lock), and training never runs beside scoring.
TRAIN_GPU_SHARE = 1.0
SCORE_GPU_SHARE = 0.5

_WORKER_DEVICE: dict | None = None  # set once per worker process by the plugin
_FROZEN = False  # whether set-up froze the framework's objects (``gc.freeze``) in this process


class KerasBackendPlugin(WorkerPlugin):
    """Runs on every worker (present and future) before it takes batchml tasks."""

    name = "batchml-keras-backend"

    def __init__(self, backend: str) -> None:
        self.backend = backend

    def setup(self, worker) -> None:
        setup_worker(self.backend)
        _quiet_expected_failures()

    def teardown(self, worker) -> None:
        # A closing worker's process exits next, and the interpreter's teardown collects every
        # object the model made: half a second of a two-core machine at the end of every run.
        # Frozen, they are freed as modules are cleared, without the collector's walks over them.
        # (A plugin replaced on a running worker is torn down too: that worker goes on, unfrozen.)
        if getattr(worker, "status", None) in (Status.closing, Status.closing_gracefully):
            gc.freeze()


class _ExpectedFailure(logging.Filter):
    """A task that raised one of batchml's errors (a damaged file, a changed input: the message names
    it and the fix) is logged by the worker as one line, not Dask's "Compute Failed" block with its
    traceback: the client prints the same message, and a traceback in a job's log reads as a crash."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("Compute Failed") and len(record.args or ()) == 5:
            key, _, _, exception, _ = record.args
            if str(exception).startswith(_error_names()):
                record.msg, record.args = "task %s failed: %s", (key, exception)
        # a task cancelled as the worker closes (the model's warm-up, when the run stopped before it ended)
        return not (str(record.msg).startswith("Async instruction for") and "ended with CancelledError" in
                    str(record.msg))


def _error_names() -> tuple[str, ...]:
    def below(cls: type) -> list[type]:
        return [cls, *(c for sub in cls.__subclasses__() for c in below(sub))]

    return tuple(f"{c.__name__}(" for c in below(BatchmlError))


def _quiet_expected_failures() -> None:
    for logger in map(logging.getLogger, ("distributed.worker", "distributed.worker.state_machine")):
        if not any(isinstance(f, _ExpectedFailure) for f in logger.filters):
            logger.addFilter(_ExpectedFailure())


def setup_worker(backend: str) -> dict:
    """Pin this worker to its own GPU (if it sees any), choose and import the Keras backend,
    and record where it computes. Returns that record (``batchml.device.device_info`` plus
    ``gpus_visible``, the GPUs the worker was given).

    dask-cuda creates a CUDA context on the worker's own device before this runs, so the
    narrowed ``CUDA_VISIBLE_DEVICES`` alone could come too late: ``pin_framework`` also
    tells the framework to use device 0 of the rotated list, the worker's own.
    """
    global _WORKER_DEVICE, _FROZEN
    if backend not in ("auto", "tensorflow") and not installed(backend):
        raise RuntimeError(f"Keras backend {backend!r} is not installed on worker {socket.gethostname()} "
                           f"({sys.executable}): install it there, or use --backend auto")
    gpus = visible_gpu_ids()
    if len(gpus) > 1 and "CUDA_VISIBLE_DEVICES" not in os.environ:
        warnings.warn(f"this worker sees {len(gpus)} GPUs and no CUDA_VISIBLE_DEVICES: it takes the first. "
                      "Start one worker per GPU with `dask cuda worker` (dask-cuda) instead", stacklevel=2)
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    own_gpu_only()
    active = configure_backend(backend, gpu_visible=bool(gpus))
    with filtered_stderr():  # pinning imports the framework: its start-up chatter stays out of the job's log
        pin_framework(active)
    import_keras()  # seconds of framework import paid once at start-up, not by the first task
    if not _FROZEN:  # once, right after the import: later, garbage not yet collected would be kept too
        # the framework's objects live as long as the process: out of the collector's walks,
        # which would otherwise go over them all again and again while partitions are scored
        gc.freeze()
        _FROZEN = True

    from batchml.device import device_info

    _WORKER_DEVICE = {**device_info(), "gpus_visible": len(gpus)}
    return _WORKER_DEVICE


def worker_device() -> dict | None:
    """Where this worker computes (``setup_worker``'s record); run on workers with ``client.run``."""
    return _WORKER_DEVICE


def check_devices(client: Client, require_gpu: bool = False) -> dict[str, dict]:
    """Every worker's device record. A worker that sees GPUs but computes on its CPU is
    warned about loudly; with ``require_gpu`` any worker on the CPU is an error."""
    from batchml.device import cpu_fallback_warning

    devices = {addr: info for addr, info in client.run(worker_device).items() if info}
    if require_gpu and not devices:
        raise BatchmlError("--require-gpu: the cluster has no workers to check yet; start its GPU workers first")
    resources = {addr: w.get("resources") or {} for addr, w in client.scheduler_info(n_workers=-1)["workers"].items()}
    for addr, info in sorted(devices.items()):
        problem = cpu_fallback_warning(info, info["gpus_visible"])
        if require_gpu and info["device"] != "gpu":
            raise BatchmlError(f"--require-gpu: worker {addr} computes on the CPU "
                               f"({problem or 'it sees no GPU: check nvidia-smi and CUDA_VISIBLE_DEVICES'})")
        if not problem and info["device"] == "gpu" and "GPU" not in resources.get(addr, {}):
            problem = ("it computes on a GPU but advertises no GPU resource, so training and sweep trials are not "
                       "spread one per GPU: start it with --resources GPU=1")
        if problem:
            print(f"batchml: WARNING: worker {addr}: {problem}", file=sys.stderr, flush=True)
    return devices


def gpu_resources(client: Client, share: float) -> dict[str, float] | None:
    """``{"GPU": share}`` where the cluster's workers advertise GPUs (so GPU work waits for a
    free one); None on CPU workers, which have no such resource to wait for."""
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    return {"GPU": share} if any("GPU" in (w.get("resources") or {}) for w in workers) else None


def describe(devices: dict[str, dict]) -> str:
    """``2 worker(s): gpu NVIDIA H200 (jax) x 2``."""
    from batchml.device import device_label

    kinds = Counter(device_label(d) for d in devices.values())
    return f"{len(devices)} worker(s): " + ", ".join(f"{k} x {n}" for k, n in sorted(kinds.items()))


def _security(cfg: ClusterConfig) -> Security | None:
    if not (cfg.tls_ca_file or cfg.tls_cert or cfg.tls_key):
        return None
    return Security(
        tls_ca_file=cfg.tls_ca_file,
        tls_client_cert=cfg.tls_cert,
        tls_client_key=cfg.tls_key,
        require_encryption=True,
    )


def _worker_environ(workers: int, hide_gpus: bool) -> dict[str, str]:
    """Environment for local worker processes, on top of Dask's own."""
    n = str(max(1, (os.cpu_count() or 1) // workers))
    return {
        **dask.config.get("distributed.nanny.pre-spawn-environ"),
        # Dask pins OMP/MKL/OpenBLAS to 1 thread for many small tasks; a worker here runs one
        # model task at a time, so it gets its share of the cores (torch computes through OpenMP)
        "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n,
        # but numpy's BLAS stays on one: its calls here are small (the input-health hashes), made
        # while the model keeps the other cores busy, and a call split over threads waits for its
        # slowest, descheduled one (measured: 1 us an image alone, 22 to 45 us so)
        "OPENBLAS_NUM_THREADS": "1",
        # each partition allocates tens of MB of pixels and activations; served from the heap
        # (glibc's default once such a block was freed) they fragment it and the worker grows
        # with every partition (measured: 950 MB after 40,000 images, 3,060 MB after 200,000)
        "MALLOC_MMAP_THRESHOLD_": "1048576",
        **({"CUDA_VISIBLE_DEVICES": ""} if hide_gpus else {}),  # --cpu: CPU workers, truly
    }


def local_workers(cfg: ClusterConfig, gpu_ids: list[str]) -> int:
    """How many local workers: one per GPU by default; never more than the GPUs (a GPU
    worker owns its device), and at least one."""
    if cfg.workers is not None and cfg.workers < 1:
        raise BatchmlError(f"--workers {cfg.workers}: a cluster needs at least one worker")
    if cfg.require_gpu and not cfg.use_gpus:
        raise BatchmlError("--cpu and --require-gpu contradict each other: drop one")
    if cfg.require_gpu and not gpu_ids:
        raise BatchmlError("--require-gpu: no GPU is visible here (nvidia-smi lists none, or CUDA_VISIBLE_DEVICES "
                           "hides them); run on a GPU machine, or drop --require-gpu to use CPU workers")
    if gpu_ids and cfg.workers and cfg.workers > len(gpu_ids):
        raise BatchmlError(f"--workers {cfg.workers}: this machine shows {len(gpu_ids)} GPU(s) and each GPU worker "
                           f"owns one; use --workers {len(gpu_ids)} or fewer, or --cpu for CPU workers")
    return cfg.workers or len(gpu_ids) or 1


class PinnedGPUCluster(LocalCluster):
    """A local cluster without dask-cuda whose worker i sees GPU i alone (as ``LocalCluster``
    otherwise: loopback only, quiet logs) and advertises GPU=1."""

    def __init__(self, gpu_ids: list[str], **kwargs) -> None:
        self.gpu_ids = list(gpu_ids)
        super().__init__(n_workers=0, resources={"GPU": 1}, **kwargs)
        self.scale(len(self.gpu_ids))
        self.sync(self._correct_state)

    def new_worker_spec(self) -> dict:
        gpu = next(g for g in self.gpu_ids if f"gpu-{g}" not in self.worker_spec)
        spec = copy.deepcopy(self.new_spec)
        spec["options"]["env"] = {**spec["options"].get("env", {}), "CUDA_VISIBLE_DEVICES": gpu}
        return {f"gpu-{gpu}": spec}


def _local_cluster(cfg: ClusterConfig):
    gpu_ids = visible_gpu_ids() if cfg.use_gpus else []
    workers = local_workers(cfg, gpu_ids)
    gpu_ids = gpu_ids[:workers]
    common = {"threads_per_worker": cfg.threads_per_worker, "dashboard_address": cfg.dashboard_address,
              "silence_logs": logging.WARNING}
    # The workers' statistical profiler samples every thread's stack many times a second:
    # on a couple of cores that is CPU and GIL time taken from the model.
    with dask.config.set({"distributed.nanny.pre-spawn-environ": _worker_environ(workers, not cfg.use_gpus),
                          "distributed.worker.profile.enabled": False}):
        if not gpu_ids:
            return LocalCluster(n_workers=workers, processes=True, **common)
        try:
            import dask_cuda
        except ImportError:
            print(f"batchml: WARNING: {len(gpu_ids)} GPU(s) visible but dask-cuda is not installed (pip install "
                  "'batchml[gpu]'): one worker per GPU, pinned, without dask-cuda's CPU affinity",
                  file=sys.stderr, flush=True)
            # the host's memory shared out between the GPU workers, as LocalCUDACluster does
            return PinnedGPUCluster(gpu_ids, memory_limit=MEMORY_LIMIT // len(gpu_ids), **common)
        # dask-cuda gives worker i the rotated list (its own GPU first) and its CPU affinity
        return dask_cuda.LocalCUDACluster(n_workers=workers, CUDA_VISIBLE_DEVICES=gpu_ids, resources={"GPU": 1},
                                          **common)


def check_cluster(cfg: ClusterConfig) -> None:
    """The flags of ``cfg`` that cannot work together, named before anything is read or started."""
    if cfg.scheduler:
        if cfg.scheduler.startswith("tls://") and not (cfg.tls_ca_file and cfg.tls_cert and cfg.tls_key):
            raise BatchmlError(f"the scheduler {cfg.scheduler} speaks TLS: pass --tls-ca-file, --tls-cert "
                               "and --tls-key (the certificates the cluster was started with)")
    else:
        local_workers(cfg, visible_gpu_ids() if cfg.use_gpus else [])


@functools.cache
def code_version() -> str:
    """A digest of this process's batchml source: client and workers must run the same code (a task's
    arguments change between versions, and a worker of another one fails every task)."""
    root = Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def check_same_code(client: Client) -> None:
    """Refuse a cluster whose workers run another batchml than the client, naming them."""
    mine = code_version()
    try:
        theirs = client.run(code_version)
    except Exception as exc:  # a worker whose batchml lacks the check: older still
        raise BatchmlError(f"a worker cannot run this batchml's version check ({type(exc).__name__}: {exc}): it "
                           "runs another batchml; install the client's on every worker and restart them") from exc
    if other := sorted(w for w, v in theirs.items() if v != mine):
        raise BatchmlError(f"{len(other)} worker(s) run another batchml than this client (code {mine}): "
                           f"{', '.join(f'{w} ({theirs[w]})' for w in other[:3])}. Install the same batchml on every "
                           "worker and restart them, or submit from their install")


def worker_wait_s() -> float:
    """How long a job waits for a worker on a scheduler that has none (``$BATCHML_WORKER_WAIT_S``)."""
    try:
        return max(0.0, float(os.environ.get("BATCHML_WORKER_WAIT_S", "120")))
    except ValueError:
        raise BatchmlError(f"$BATCHML_WORKER_WAIT_S={os.environ['BATCHML_WORKER_WAIT_S']!r} is not a number of "
                           "seconds") from None


def _wait_for_workers(client: Client, address: str) -> None:
    """A scheduler without workers (restarted: its workers went with it) would hold the job forever:
    it waits ``worker_wait_s``, saying so, then fails."""
    if client.scheduler_info().get("workers"):
        return
    wait = worker_wait_s()
    print(f"cluster: the scheduler at {address} has no workers: waiting up to {wait:.0f} s for one to join",
          file=sys.stderr, flush=True)
    try:
        client.wait_for_workers(1, timeout=wait)
    except TimeoutError:
        raise BatchmlError(f"no Dask worker joined the scheduler at {address} in {wait:.0f} s: start workers "
                           f"(`dask worker {address}`; a restarted scheduler loses its workers), then rerun the "
                           "same command ($BATCHML_WORKER_WAIT_S sets the wait)") from None


@contextmanager
def connect(cfg: ClusterConfig, verbose: bool = False) -> Iterator[Client]:
    """A Dask client for ``cfg``, with every worker set up by the Keras backend plugin and
    its device checked (``check_devices``)."""
    cluster = None
    check_cluster(cfg)
    try:
        if cfg.scheduler:
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
        if cfg.scheduler:
            _wait_for_workers(client, cfg.scheduler)
        try:
            client.register_plugin(KerasBackendPlugin(cfg.backend))
        except Exception as exc:  # raised on a worker: its message says which and why
            raise BatchmlError(f"setting up the workers for Keras backend {cfg.backend!r} failed: "
                               f"{type(exc).__name__}: {exc}") from exc
        if cfg.scheduler:  # a local cluster's workers run this very install
            check_same_code(client)
        devices = check_devices(client, cfg.require_gpu)
        if verbose:
            print(f"cluster: {describe(devices)}; Dask dashboard {client.dashboard_link}", file=sys.stderr, flush=True)
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
