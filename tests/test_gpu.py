"""GPU set-up, tested on a CPU machine: the framework calls are mocked, the Dask processes are
real. ``pytest -k "gpu or cuda or pin"`` runs these."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from distributed.core import Status

from batchml import backend, cli, cluster, device
from batchml.cluster import ClusterConfig
from batchml.errors import BatchmlError
from batchml.score.scoring import ScoreConfig, score

ROOT = Path(__file__).resolve().parents[1]


def test_a_rotated_cuda_visible_devices_is_narrowed_to_the_workers_own_gpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3,0,1")  # dask-cuda's worker 2 of 4
    monkeypatch.delenv("JAX_CUDA_VISIBLE_DEVICES", raising=False)
    assert backend.own_gpu_only() == "2"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2"
    assert os.environ["JAX_CUDA_VISIBLE_DEVICES"] == "0"  # JAX: device 0 of what CUDA shows, its own


def test_no_cuda_visible_devices_is_left_alone(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert backend.own_gpu_only() is None and os.environ["CUDA_VISIBLE_DEVICES"] == ""


def test_a_gpu_worker_pins_its_gpu_before_the_framework_starts(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3,0,1")
    monkeypatch.setattr(cluster, "visible_gpu_ids", lambda: ["2", "3", "0", "1"])
    calls = []
    monkeypatch.setattr(cluster, "configure_backend", lambda b, gpu_visible: calls.append(
        ("configure", b, gpu_visible, os.environ["CUDA_VISIBLE_DEVICES"])) or "jax")
    monkeypatch.setattr(cluster, "pin_framework", lambda b: calls.append(("pin", b)))
    h200 = {"backend": "jax", "device": "gpu", "device_name": "NVIDIA H200"}
    monkeypatch.setattr(device, "device_info", lambda: h200)
    monkeypatch.setattr(cluster, "_FROZEN", True)  # this test process's objects stay collectable
    record = cluster.setup_worker("auto")
    assert calls == [("configure", "auto", True, "2"), ("pin", "jax")]  # narrowed first, then the framework
    assert record == {"backend": "jax", "device": "gpu", "device_name": "NVIDIA H200", "gpus_visible": 4}
    assert cluster.worker_device() == record


def test_a_worker_keeps_its_objects_out_of_the_collectors_walks_at_set_up_and_at_close(monkeypatch):
    monkeypatch.setattr(cluster, "configure_backend", lambda b, gpu_visible: "tensorflow")
    monkeypatch.setattr(cluster, "pin_framework", lambda b: None)
    monkeypatch.setattr(cluster, "import_keras", lambda: None)
    monkeypatch.setattr(device, "device_info", lambda: {"backend": "tensorflow"})
    monkeypatch.setattr(cluster, "_FROZEN", False)
    plugin = cluster.KerasBackendPlugin("tensorflow")
    try:
        plugin.setup(types.SimpleNamespace(status=Status.running))
        assert gc.get_freeze_count() > 0  # the framework's objects, made once, never walked again
        gc.unfreeze()
        plugin.setup(types.SimpleNamespace(status=Status.running))  # set up again by the next client:
        assert gc.get_freeze_count() == 0  # its garbage of earlier runs is not kept for good
        plugin.teardown(types.SimpleNamespace(status=Status.running))  # replaced on a running worker
        assert gc.get_freeze_count() == 0
        made_since = [[i] for i in range(1000)]  # a worker's caches, filled while it scored
        plugin.teardown(types.SimpleNamespace(status=Status.closing))  # the process exits next
        assert gc.get_freeze_count() >= len(made_since)  # the exit does not walk them
    finally:
        gc.unfreeze()


def test_tensorflow_is_pinned_to_gpu_0_with_memory_growth(monkeypatch):
    calls = []
    config = types.SimpleNamespace(
        list_physical_devices=lambda kind: ["gpu0", "gpu1"],
        set_visible_devices=lambda devices, kind: calls.append(("visible", devices, kind)),
        experimental=types.SimpleNamespace(set_memory_growth=lambda d, on: calls.append(("growth", d, on))),
    )
    monkeypatch.setitem(sys.modules, "tensorflow", types.SimpleNamespace(config=config))
    backend.pin_framework("tensorflow")
    assert calls == [("visible", ["gpu0"], "GPU"), ("growth", "gpu0", True)]


def test_torch_is_pinned_to_cuda_device_0(monkeypatch):
    chosen = []
    cuda = types.SimpleNamespace(is_available=lambda: True, set_device=chosen.append)
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    backend.pin_framework("torch")
    assert chosen == [0]


@pytest.mark.parametrize(("installed", "gpu", "expected"), [
    ({"jax", "jax_cuda13_plugin", "tensorflow"}, True, "jax"),
    ({"jax", "jax_cuda13_plugin", "tensorflow"}, False, "tensorflow"),
    ({"torch", "torch-cuda-build", "tensorflow"}, True, "torch"),
    ({"torch", "tensorflow"}, True, "tensorflow"),  # a CPU build of torch is no faster than TensorFlow
    ({"tensorflow"}, True, "tensorflow"),  # no GPU framework: the device check then warns
    ({"jax"}, False, "jax"),
])
def test_auto_backend_uses_the_gpu_where_a_gpu_framework_is_installed(monkeypatch, installed, gpu, expected):
    monkeypatch.setattr(backend, "installed", lambda module: module in installed)
    monkeypatch.setattr(backend, "torch_has_cuda", lambda: "torch-cuda-build" in installed)
    assert backend.resolve_backend("auto", gpu) == expected
    assert backend.resolve_backend("torch", gpu) == "torch"  # a named backend is kept


def test_gpu_visible_but_cpu_compute_warns_naming_the_fix():
    cpu = {"backend": "tensorflow", "device": "cpu", "device_name": "cpu"}
    message = device.cpu_fallback_warning(cpu, gpus_visible=2)
    assert "2 GPU(s) visible" in message and "pip install 'batchml[gpu]'" in message and "--require-gpu" in message
    assert device.cpu_fallback_warning(cpu, gpus_visible=0) is None
    assert device.cpu_fallback_warning({**cpu, "device": "gpu"}, gpus_visible=1) is None


class _Workers:
    """A client stand-in whose workers report the given device records and resources."""

    def __init__(self, records: dict, resources: dict | None = None) -> None:
        self.records, self.resources = records, {"GPU": 1} if resources is None else resources

    def run(self, function):
        return self.records

    def scheduler_info(self, n_workers: int):
        return {"workers": {addr: {"resources": self.resources} for addr in self.records}}


def test_a_gpu_worker_computing_on_its_cpu_is_warned_about_or_refused(capsys):
    records = {"tcp://w1:1": {"backend": "tensorflow", "device": "cpu", "device_name": "cpu", "gpus_visible": 1}}
    assert cluster.check_devices(_Workers(records)) == records
    assert "WARNING: worker tcp://w1:1: 1 GPU(s) visible" in capsys.readouterr().err
    with pytest.raises(BatchmlError, match="--require-gpu: worker tcp://w1:1 computes on the CPU"):
        cluster.check_devices(_Workers(records), require_gpu=True)
    on_gpu = {"tcp://w1:1": {**records["tcp://w1:1"], "backend": "jax", "device": "gpu", "device_name": "NVIDIA H200"}}
    assert cluster.check_devices(_Workers(on_gpu), require_gpu=True) == on_gpu
    assert cluster.describe(on_gpu) == "1 worker(s): gpu NVIDIA H200 (jax) x 1"
    with pytest.raises(BatchmlError, match="no workers to check"):
        cluster.check_devices(_Workers({}), require_gpu=True)


def test_a_gpu_worker_without_the_gpu_resource_is_warned_about(capsys):
    on_gpu = {"tcp://w1:1": {"backend": "jax", "device": "gpu", "device_name": "NVIDIA H200", "gpus_visible": 1}}
    cluster.check_devices(_Workers(on_gpu, resources={}))
    err = capsys.readouterr().err
    assert "advertises no GPU resource" in err and "--resources GPU=1" in err
    cluster.check_devices(_Workers(on_gpu))
    assert capsys.readouterr().err == ""


def test_require_gpu_without_a_gpu_exits_2_before_anything_starts(tmp_path, capsys):
    rc = cli.main(["score", "--dataset", "d", "--root", str(tmp_path), "--require-gpu"])
    assert rc == 2 and "--require-gpu: no GPU is visible" in capsys.readouterr().err


def test_cpu_and_require_gpu_together_exit_2_as_a_contradiction(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cluster, "visible_gpu_ids", lambda: ["0", "1"])
    rc = cli.main(["score", "--dataset", "d", "--root", str(tmp_path), "--cpu", "--require-gpu"])
    assert rc == 2 and "--cpu and --require-gpu contradict each other" in capsys.readouterr().err


def test_an_unknown_keras_backend_in_the_environment_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "garbage")
    rc = cli.main(["score", "--dataset", "d", "--root", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown Keras backend 'garbage'" in err and "Traceback" not in err


@pytest.mark.slow
def test_a_backend_missing_on_the_workers_is_a_clear_error():
    if backend.installed("torch"):
        pytest.skip("torch is installed here")
    with pytest.raises(BatchmlError, match="Keras backend 'torch' is not installed on worker"), \
            cluster.connect(ClusterConfig(backend="torch", workers=1)):
        pass


def test_a_dotted_module_under_a_missing_package_is_not_installed():
    assert not backend.installed("jax_plugins_nowhere.xla_cuda12")  # find_spec raises here


def test_auto_takes_torch_on_a_gpu_only_as_a_cuda_build(tmp_path, monkeypatch):
    package = tmp_path / "torch"
    (package / "lib").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(backend, "jax_has_cuda", lambda: False)
    assert not backend.torch_has_cuda()  # a CPU build
    (package / "lib" / "libtorch_cuda.so").write_bytes(b"")
    assert backend.torch_has_cuda() and backend.resolve_backend("auto", gpu_visible=True) == "torch"


def test_more_workers_than_gpus_exits_2_with_the_reason(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cluster, "visible_gpu_ids", lambda: ["0", "1"])
    rc = cli.main(["score", "--dataset", "d", "--root", str(tmp_path), "--workers", "3"])
    assert rc == 2
    assert "--workers 3: this machine shows 2 GPU(s) and each GPU worker owns one" in capsys.readouterr().err
    with pytest.raises(BatchmlError, match="at least one worker"):
        cluster.local_workers(ClusterConfig(workers=0), [])
    assert cluster.local_workers(ClusterConfig(), ["0", "1"]) == 2  # one per GPU by default
    assert cluster.local_workers(ClusterConfig(workers=3), []) == 3  # CPU workers: any number


def test_dask_cuda_cluster_gets_one_worker_per_gpu_advertising_a_gpu(monkeypatch):
    made = {}
    fake = types.SimpleNamespace(LocalCUDACluster=lambda **kw: made.update(kw) or "cuda-cluster")
    monkeypatch.setitem(sys.modules, "dask_cuda", fake)
    monkeypatch.setattr(cluster, "visible_gpu_ids", lambda: ["0", "1", "2"])
    assert cluster._local_cluster(ClusterConfig(workers=2)) == "cuda-cluster"
    assert made["n_workers"] == 2 and made["CUDA_VISIBLE_DEVICES"] == ["0", "1"]
    assert made["resources"] == {"GPU": 1} and made["threads_per_worker"] == 2


def test_cpu_flag_hides_the_gpus_from_cpu_workers():
    assert cluster._worker_environ(2, hide_gpus=True)["CUDA_VISIBLE_DEVICES"] == ""
    assert "CUDA_VISIBLE_DEVICES" not in cluster._worker_environ(2, hide_gpus=False)


def test_a_local_worker_gets_its_share_of_the_cores_but_numpy_blas_one_thread():
    environ = cluster._worker_environ(1, hide_gpus=True)
    assert environ["OMP_NUM_THREADS"] == environ["MKL_NUM_THREADS"] == str(os.cpu_count() or 1)
    # numpy's small calls, made beside the model, would wait on a descheduled second thread
    assert environ["OPENBLAS_NUM_THREADS"] == "1"


def _pinned_task(seconds: float) -> tuple[str, float, float]:
    started = time.time()
    time.sleep(seconds)
    return os.environ.get("CUDA_VISIBLE_DEVICES"), started, time.time()


@pytest.mark.slow
def test_without_dask_cuda_worker_i_is_pinned_to_gpu_i_and_gpu_tasks_spread(monkeypatch, capsys):
    """Real worker processes; two fake GPUs (their ids reach the workers as CUDA_VISIBLE_DEVICES)."""
    monkeypatch.setattr(cluster, "visible_gpu_ids", lambda: ["0", "1"])
    monkeypatch.setitem(sys.modules, "dask_cuda", None)  # not installed
    with cluster.connect(ClusterConfig(backend="tensorflow")) as client:
        assert "dask-cuda is not installed" in capsys.readouterr().err
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")  # loopback, as LocalCluster
        workers = client.scheduler_info(n_workers=-1)["workers"].values()
        assert all(w["host"] == "127.0.0.1" for w in workers)
        assert sorted(w["resources"].get("GPU") for w in workers) == [1, 1]
        assert sorted(client.run(lambda: os.environ["CUDA_VISIBLE_DEVICES"]).values()) == ["0", "1"]
        resources = cluster.gpu_resources(client, cluster.TRAIN_GPU_SHARE)
        assert resources == {"GPU": 1.0}
        # two whole-GPU tasks at once: one on each GPU, side by side, never two on one
        futures = [client.submit(_pinned_task, 2.0, pure=False, resources=resources) for _ in range(2)]
        (gpu_a, start_a, end_a), (gpu_b, start_b, end_b) = client.gather(futures)
        assert {gpu_a, gpu_b} == {"0", "1"} and start_b < end_a and start_a < end_b


@pytest.mark.slow
def test_cpu_workers_ask_for_no_gpu(client):
    assert cluster.gpu_resources(client, cluster.SCORE_GPU_SHARE) is None


@pytest.mark.slow
def test_cards_and_manifests_name_the_device_each_task_computed_on(client, trained_store):
    from batchml.registry import read_card, resolve

    card = read_card(trained_store, resolve(trained_store, "shapes/production"))
    where = card.device
    assert (where["backend"], where["device"], where["device_name"]) == ("tensorflow", "cpu", "cpu")
    assert set(where["versions"]) >= {"keras", "tensorflow"}
    manifest = score(client, trained_store, ScoreConfig("shapes-test", model="shapes/production",
                                                        run_id="device-record"), verbose=False)
    assert [(d["device"], d["device_name"]) for d in manifest.devices] == [("cpu", "cpu")]
    assert all({"device", "gpus_visible"} <= set(r) for r in client.run(cluster.worker_device).values())


@pytest.mark.slow
def test_gpu_extras_resolve_on_linux_x86_64(tmp_path):
    """The resolver on ``pip install '.[gpu]'``'s requirements, for a Linux GPU machine (uv
    resolves for another platform and Python from the wheels' metadata alone). The four
    resolutions wait on the package index, so they run at once."""
    uv = Path(sys.executable).with_name("uv")
    combos = [(extra, python) for extra in ("gpu", "gpu-cu12") for python in ("3.11", "3.12")]
    procs = {(extra, python): subprocess.Popen(
        [str(uv), "pip", "compile", "-q", str(ROOT / "pyproject.toml"), "--extra", extra, "--python-version", python,
         "--python-platform", "x86_64-manylinux_2_28", "-o", str(tmp_path / f"{extra}-{python}.txt")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for extra, python in combos}
    for (extra, python), proc in procs.items():
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, (extra, python, err[-3000:])
        lock = (tmp_path / f"{extra}-{python}.txt").read_text()
        cuda = "cu12" if extra == "gpu-cu12" else "cu13"
        assert "dask-cuda==" in lock and f"jax-cuda{cuda[2:]}-plugin==" in lock and "cuda-core" in lock, (extra, python)


@pytest.mark.slow
def test_gpu_check_runs_in_its_reduced_cpu_mode(image_folders, tmp_path):
    """benchmarks/gpu_check.py end to end on CPU workers and tiny data, so it never rots."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--small", "--source",
                          str(image_folders), "--root", str(tmp_path / "store"), "--out", str(tmp_path / "f.json")],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures == json.loads((tmp_path / "f.json").read_text())
    assert figures["worker_device"]["device"] == "cpu" and figures["manifest_device_names"] == ["cpu"]
    assert figures["score_images"] == 600 and figures["bare_images_per_s"] > 0 and figures["score_images_per_s"] > 0
    assert figures["framework_devices_per_worker"] == [1] and "airbench_skipped" in figures
    assert set(figures["targets"]) == {"one_process_per_gpu", "accuracy_within_0.5_points_of_airbench94",
                                       "train_time_at_most_3x_airbench94", "score_at_least_0.8x_bare",
                                       "card_and_manifest_name_the_gpu"}
