"""Batch sizing on the device: halve on out-of-memory, remember what fitted; one model
computation at a time per worker process."""

import threading
import time

import numpy as np
import pytest

from batchml import device
from batchml.errors import BatchmlError


class ResourceExhaustedError(Exception):
    """Named as TensorFlow names its out-of-memory error."""


def limited_predict(limit: int, calls: list[int]):
    def predict(x):
        calls.append(len(x))
        if len(x) > limit:
            raise ResourceExhaustedError(f"OOM when allocating tensor of shape [{len(x)},32,32,32]")
        return np.tile(np.arange(3, dtype=np.float32), (len(x), 1)) + x[:, :1]
    return predict


def test_a_batch_too_large_for_the_device_is_halved_until_it_fits():
    x = np.arange(1000, dtype=np.float32)[:, None]
    calls = []
    probs, used = device.predict_fitting(limited_predict(300, calls), x, 1024, "m/v-halve")
    assert used == 256 and calls[:3] == [1000, 512, 256]
    assert probs.shape == (1000, 3) and np.array_equal(probs[:, 0], x[:, 0])  # every row, in order
    assert device.start_batch(None, "m/v-halve") == 256  # the next partition starts at what fitted
    assert device.start_batch(4096, "m/v-halve") == 256
    assert device.start_batch(128, "m/v-halve") == 128


def test_other_errors_are_not_taken_for_out_of_memory():
    def broken(x):
        raise ValueError("input has the wrong shape")
    with pytest.raises(ValueError, match="wrong shape"):
        device.predict_fitting(broken, np.zeros((10, 1)), 8, "m/v-broken")


def test_a_model_that_never_fits_fails_with_a_clear_message():
    with pytest.raises(BatchmlError, match="does not fit the device's memory"):
        device.predict_fitting(limited_predict(0, []), np.zeros((4, 1), np.float32), 4, "m/v-huge")


@pytest.mark.parametrize("message", ["RESOURCE_EXHAUSTED: Out of memory while trying to allocate",
                                     "CUDA out of memory. Tried to allocate 2.00 GiB"])
def test_jax_and_torch_out_of_memory_errors_are_recognised(message):
    assert device.is_out_of_memory(RuntimeError(message))
    assert not device.is_out_of_memory(RuntimeError("shape mismatch"))


def test_the_device_lock_keeps_model_computations_one_at_a_time():
    running, peak = [0], [0]

    def compute():
        with device.device_lock():
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            time.sleep(0.05)
            running[0] -= 1

    threads = [threading.Thread(target=compute) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == 1


def test_a_worker_logs_a_tasks_batchml_error_in_one_line_and_other_errors_whole():
    """The client prints a batchml error's message once; Dask's "Compute Failed" block with its
    traceback beside it read as a crash in a nightly job's log."""
    import logging

    from batchml.cluster import _ExpectedFailure
    from batchml.integrity import DamagedFileError  # noqa: F401 - raised in the worker, so imported there

    def record(exception: str, msg: str = "Compute Failed\nKey: %s\nState: %s\nTask: %s\nException: %r\n"
                                           "Traceback: %r\n") -> logging.LogRecord:
        args = ("score-r-part-1", "executing", "score_partition(...)", exception, "  File ...") \
            if msg.startswith("Compute") else ()
        return logging.LogRecord("distributed.worker", logging.ERROR, __file__, 1, msg, args, None)

    expected = record('DamagedFileError("runs/r/stats/part-1.json is damaged: run batchml doctor --repair")')
    assert _ExpectedFailure().filter(expected)
    assert expected.getMessage() == ('task score-r-part-1 failed: DamagedFileError("runs/r/stats/part-1.json is '
                                     'damaged: run batchml doctor --repair")')
    crash = record("ValueError('boom')")
    assert _ExpectedFailure().filter(crash) and "Traceback: '  File ...'" in crash.getMessage()
    assert not _ExpectedFailure().filter(record("", "Async instruction for <Task cancelled> ended with "
                                                    "CancelledError"))


def test_workers_of_another_batchml_are_refused_naming_them():
    import types

    from batchml.cluster import check_same_code, code_version

    same = types.SimpleNamespace(run=lambda f: {"tcp://10.0.0.1:1": code_version()})
    check_same_code(same)
    other = types.SimpleNamespace(run=lambda f: {"tcp://10.0.0.1:1": code_version(), "tcp://10.0.0.2:1": "0123abcd"})
    with pytest.raises(BatchmlError, match=r"1 worker\(s\) run another batchml .*tcp://10.0.0.2:1 \(0123abcd\)"):
        check_same_code(other)

    def older(f):  # its batchml has no version check: the function does not unpickle there
        raise AttributeError("module 'batchml.cluster' has no attribute 'code_version'")

    with pytest.raises(BatchmlError, match="runs another batchml; install the client's on every worker"):
        check_same_code(types.SimpleNamespace(run=older))


def test_bfloat16_training_falls_back_to_float32_on_a_cpu_without_it(monkeypatch, capsys):
    """Emulated, bfloat16 trained the demo's net five times slower than float32 on an AMD EPYC without
    AVX512-BF16: the demo took hours."""
    monkeypatch.setattr(device, "device_info", lambda: {"device": "cpu"})
    monkeypatch.setattr(device, "cpu_has_bfloat16", lambda: False)
    assert device.training_precision("mixed_bfloat16") == "float32"
    assert "no bfloat16 instructions" in capsys.readouterr().err
    assert device.training_precision("float32") == "float32"
    monkeypatch.setattr(device, "cpu_has_bfloat16", lambda: True)
    assert device.training_precision("mixed_bfloat16") == "mixed_bfloat16"
    monkeypatch.setattr(device, "device_info", lambda: {"device": "gpu"})
    monkeypatch.setattr(device, "cpu_has_bfloat16", lambda: False)
    assert device.training_precision("mixed_bfloat16") == "mixed_bfloat16"
