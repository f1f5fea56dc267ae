"""`cedana k8s checkpoint` against a fake kubelet: HTTPS on loopback with a certificate made here,
the checkpoint API's path, bearer token and answer, and a real Podman-made archive written into
the "node's" checkpoint directory, which the command then stores."""

from __future__ import annotations

import datetime
import ipaddress
import json
import shutil
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.fixtures_mount import make_mount
from tests.fixtures_podman import podman, podman_container  # noqa: F401 - fixtures

pytestmark = [pytest.mark.slow, pytest.mark.real]
TOKEN = "test-token-0123456789"


def _self_signed(base: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-kubelet")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = base / "kubelet.crt", base / "kubelet.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class FakeKubelet:
    """POST /checkpoint/{ns}/{pod}/{container}: copies `archive` into `node_dir` under the kubelet's
    name and answers {"items": ["/var/lib/kubelet/checkpoints/<name>"]}, as the kubelet does."""

    def __init__(self, base: Path, archive: Path):
        self.node_dir = base / "node-checkpoints"
        self.node_dir.mkdir()
        self.archive = archive
        self.requests: list[tuple[str, str | None]] = []
        self.cert, key = _self_signed(base)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, key)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _handler(self):
        kubelet = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                kubelet.requests.append((self.path, self.headers.get("Authorization")))
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self._answer(401, b"Unauthorized")
                parts = self.path.split("?")[0].strip("/").split("/")
                if len(parts) != 4 or parts[0] != "checkpoint":
                    return self._answer(404, b"404 page not found")
                ns, pod, ctr = parts[1:]
                name = f"checkpoint-{pod}_{ns}-{ctr}-2026-11-30T12:00:00Z.tar"
                shutil.copy(kubelet.archive, kubelet.node_dir / name)
                self._answer(200, json.dumps({"items": [f"/var/lib/kubelet/checkpoints/{name}"]}).encode())

            def _answer(self, code, body):
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        return Handler

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def kubelet(podman, podman_container, tmp_path):
    archive = podman.checkpoint(podman_container, tmp_path / "podman.tar", "zstd")
    fake = FakeKubelet(tmp_path, archive)
    try:
        yield fake
    finally:
        fake.close()


def test_k8s_checkpoint_through_the_kubelet_api(kubelet, podman_container, tmp_path):
    m = make_mount(tmp_path / "m")
    (tmp_path / "token").write_text(TOKEN + "\n")
    args = ["k8s", "checkpoint", "prod/api-7d9/server", "--kubelet-url", kubelet.url, "--ca-file", kubelet.cert,
            "--token-file", tmp_path / "token", "--checkpoint-dir", kubelet.node_dir, "--timeout", "30", "-O", "json"]
    r = m.cedana(*args)
    assert r.returncode == 0, r.stderr
    assert kubelet.requests[-1] == ("/checkpoint/prod/api-7d9/server?timeout=30", f"Bearer {TOKEN}")
    [stored] = json.loads(r.stdout)
    # A Podman archive names its container, not a pod: the job is the container's name.
    assert stored["job"] == podman_container and stored["archive"].startswith("checkpoint-api-7d9_prod-server-")
    inspect = m.cedana("checkpoint", "inspect", f"{stored['job']}/{stored['id']}")
    assert inspect.returncode == 0 and "engine podman" in inspect.stdout, inspect.stderr
    verify = m.cedana("checkpoint", "verify", f"{stored['job']}/{stored['id']}")
    assert verify.returncode == 0, verify.stderr


def test_k8s_checkpoint_errors_are_one_line(kubelet, tmp_path):
    m = make_mount(tmp_path / "m")
    (tmp_path / "bad-token").write_text("wrong")
    (tmp_path / "token").write_text(TOKEN)
    other_ca, _ = _self_signed(tmp_path / "m")
    cases = [
        (["--token-file", tmp_path / "bad-token", "--ca-file", kubelet.cert], 77, "nodes/checkpoint"),
        (["--token-file", tmp_path / "token", "--ca-file", other_ca], 1, "certificate verify failed"),
        (["--token-file", tmp_path / "token", "--ca-file", kubelet.cert, "--checkpoint-dir", tmp_path / "empty"], 3,
         "not in"),
    ]
    for extra, code, words in cases:
        r = m.cedana("k8s", "checkpoint", "ns/pod/ctr", "--kubelet-url", kubelet.url, *extra)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == code and len(lines) == 1 and words in lines[0], (extra, r)
    r = m.cedana("k8s", "checkpoint", "pod-without-namespace", "--kubelet-url", kubelet.url)
    assert r.returncode == 2 and "NAMESPACE/POD/CONTAINER" in r.stderr
