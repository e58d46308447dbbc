"""Submitting to an existing cluster over tls://: `dask scheduler` and `dask worker` started
with certificates, and `batchml score --scheduler tls://...` with the client's."""

from __future__ import annotations

import datetime as dt
import ipaddress
import subprocess
import sys

import pandas as pd
import pytest

from tests.conftest import copy_store, free_port, stop_processes, wait_for_port

pytestmark = pytest.mark.slow
MODEL = "shapes/production"


def write_certificates(folder) -> dict[str, str]:
    """A throw-away CA and one certificate for 127.0.0.1 signed by it (scheduler, workers, client)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def certificate(subject: str, key, issuer: str, signer, ca: bool) -> x509.Certificate:
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certificate("batchml test CA", ca_key, "batchml test CA", ca_key, ca=True)
    cert = certificate("127.0.0.1", key, "batchml test CA", ca_key, ca=False)
    paths = {"ca": folder / "ca.pem", "cert": folder / "cert.pem", "key": folder / "key.pem"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return {k: str(v) for k, v in paths.items()}


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    certs = write_certificates(tmp_path_factory.mktemp("certs"))
    tls = ["--tls-ca-file", certs["ca"], "--tls-cert", certs["cert"], "--tls-key", certs["key"]]
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "dask", "scheduler", "--protocol", "tls", "--host", "127.0.0.1",
                               "--port", str(port), "--no-dashboard", *tls],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    assert wait_for_port(port), "dask scheduler did not start"
    address = f"tls://127.0.0.1:{port}"
    procs.append(subprocess.Popen([sys.executable, "-m", "dask", "worker", address, "--nthreads", "2",
                                   "--no-dashboard", *tls], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    yield address, tls
    stop_processes(procs)


def test_score_submits_to_a_tls_scheduler_with_certificates(tls_cluster, trained_store, tmp_path):
    address, tls = tls_cluster
    store = copy_store(trained_store, tmp_path / "store")
    command = [sys.executable, "-m", "batchml", "score", "--scheduler", address, "--dataset", "shapes-test",
               "--model", MODEL, "--run-id", "over-tls", "--root", store.config.root]
    done = subprocess.run([*command, *tls], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    preds = pd.read_parquet(store.path("runs/over-tls/predictions"))
    assert len(preds) == 60 and preds.image_id.is_unique


def test_a_tls_scheduler_without_certificates_is_a_clear_error(tls_cluster, trained_store, tmp_path):
    address, _ = tls_cluster
    done = subprocess.run([sys.executable, "-m", "batchml", "score", "--scheduler", address, "--dataset",
                           "shapes-test", "--model", MODEL, "--root", trained_store.config.root],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--tls-ca-file" in done.stderr
