"""Checkpointing a pod's container through its node's kubelet, then storing the archive.

This module owns the call to the kubelet's checkpoint API (KEP-2008: `POST
https://<node>:10250/checkpoint/{namespace}/{pod}/{container}`, allowed by RBAC `nodes/checkpoint`
create), its credentials (a bearer token and the CA that signs the kubelet's serving certificate,
by default the service account's files of a pod), and finding the archive the kubelet names: it
writes it on its own node, so it is read from the kubelet's checkpoint directory as mounted here.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..catalog import Manifest
from ..config import Settings
from ..errors import CedanaError, CheckpointError, NotFound, PermissionDenied, UsageError
from .checkpoints import open_checkpoints
from .kubelet import import_archive

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
KUBELET_PORT = 10250


@dataclass(frozen=True)
class KubeletTarget:
    """Where the kubelet listens and how to talk to it."""

    url: str
    token: str | None = None
    ca_file: str | None = None
    insecure: bool = False


@dataclass(frozen=True)
class ContainerRef:
    namespace: str
    pod: str
    container: str

    @classmethod
    def parse(cls, text: str) -> "ContainerRef":
        parts = text.split("/")
        if len(parts) != 3 or not all(parts):
            raise UsageError(f"{text!r}: name the container as NAMESPACE/POD/CONTAINER")
        return cls(*parts)

    def path(self) -> str:
        return "/".join(urllib.parse.quote(p, safe="") for p in (self.namespace, self.pod, self.container))


def kubelet_target(node: str | None = None, url: str | None = None, token: str | None = None,
                   token_file: str | None = None, ca_file: str | None = None, insecure: bool = False,
                   environ: dict[str, str] | None = None) -> KubeletTarget:
    """The kubelet to call: `url`, else `https://<node>:10250` (node defaults to $NODE_NAME, as a
    DaemonSet sets it from the downward API); token and CA default to the service account's files."""
    environ = dict(os.environ) if environ is None else environ
    if not url:
        node = node or environ.get("NODE_NAME")
        if not node:
            raise UsageError("no kubelet to call: give --node or --kubelet-url (or set NODE_NAME)")
        url = f"https://{node}" if ":" in node else f"https://{node}:{KUBELET_PORT}"
    if token is None:
        token = _read_token(token_file or os.path.join(SERVICE_ACCOUNT_DIR, "token"), explicit=bool(token_file))
    if ca_file is None and not insecure and os.path.isfile(os.path.join(SERVICE_ACCOUNT_DIR, "ca.crt")):
        ca_file = os.path.join(SERVICE_ACCOUNT_DIR, "ca.crt")
    return KubeletTarget(url=url.rstrip("/"), token=token, ca_file=ca_file, insecure=insecure)


def _read_token(path: str, explicit: bool) -> str | None:
    try:
        return Path(path).read_text().strip() or None
    except FileNotFoundError:
        if explicit:
            raise NotFound(f"{path}: no such token file") from None
        return None
    except OSError as exc:
        raise PermissionDenied(f"{path}: cannot read the token ({exc.strerror})") from None


def request_checkpoint(target: KubeletTarget, ref: ContainerRef, timeout: int = 0) -> list[str]:
    """Ask the kubelet to checkpoint the container; returns the archive paths it wrote (on its node)."""
    url = f"{target.url}/checkpoint/{ref.path()}" + (f"?timeout={timeout}" if timeout else "")
    req = urllib.request.Request(url, method="POST", data=b"")
    if target.token:
        req.add_header("Authorization", f"Bearer {target.token}")
    try:
        with urllib.request.urlopen(req, context=_tls(target), timeout=(timeout or 600) + 30) as resp:
            body = resp.read()
    except urllib.error.HTTPError as exc:
        raise _http_error(exc, url) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CedanaError(f"cannot reach the kubelet at {target.url}: {reason}") from None
    try:
        items = json.loads(body)["items"]
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"the kubelet at {target.url} answered with no checkpoint list") from None
    if not items or not all(isinstance(i, str) for i in items):
        raise CheckpointError(f"the kubelet at {target.url} wrote no checkpoint for {ref.path()}")
    return items


def _tls(target: KubeletTarget) -> ssl.SSLContext:
    if target.insecure:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    try:
        return ssl.create_default_context(cafile=target.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"{target.ca_file}: not a usable CA file ({exc})") from None


def _http_error(exc: urllib.error.HTTPError, url: str) -> CedanaError:
    detail = exc.read().decode(errors="replace").strip().splitlines()
    said = f": {detail[0][:200]}" if detail else ""
    if exc.code in (401, 403):
        return PermissionDenied(f"the kubelet refused the checkpoint ({exc.code} {exc.reason}){said}"
                                " - the caller needs RBAC `create` on `nodes/checkpoint`")
    if exc.code == 404:
        return NotFound(f"the kubelet has no such container or no checkpoint API ({url}: 404){said}")
    return CheckpointError(f"the kubelet could not checkpoint the container ({exc.code} {exc.reason}){said}")


def locate_archive(path: str, checkpoint_dir: str) -> Path:
    """The kubelet's archive as seen here: its own path, or the same name in `checkpoint_dir`
    (the kubelet's directory mounted into this pod somewhere else)."""
    for candidate in (Path(checkpoint_dir) / os.path.basename(path), Path(path)):
        if candidate.is_file():
            return candidate
    raise NotFound(f"the kubelet wrote {path} on its node, but it is not in {checkpoint_dir} here"
                   " (run this on that node, with the kubelet's checkpoint directory mounted)")


def checkpoint_container(settings: Settings, ref: ContainerRef, target: KubeletTarget, *, job: str | None = None,
                         timeout: int = 0, checkpoint_dir: str | None = None,
                         store_url: str | None = None) -> list[Manifest]:
    """Checkpoint a pod's container through its kubelet and store what it wrote."""
    paths = request_checkpoint(target, ref, timeout)
    archives = [locate_archive(p, checkpoint_dir or settings.kubernetes.checkpoint_dir) for p in paths]
    with open_checkpoints(settings, store_url) as cps:
        stored = [import_archive(cps, a, job) for a in archives]
    for archive, m in zip(archives, stored):
        log.info("stored %s from the kubelet as %s", archive, m.name)
    return stored
