"""deploy/kubernetes/ validates offline against the Kubernetes schemas of 1.30 to the newest the
validator ships, and holds what the node agent needs; its config is one cedana accepts."""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from cedanafs.config import load_settings

pytestmark = pytest.mark.unit

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
OLDEST = (1, 30)


def _versions() -> list[str]:
    newest = tuple(int(x) for x in latest_version().split(".")[:2])
    assert newest >= (1, 35), f"the validator ships schemas up to {latest_version()} only"
    return [f"1.{minor}.0" for minor in range(OLDEST[1], newest[1] + 1)]


def _documents() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        docs += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _by_kind(kind: str) -> dict:
    [doc] = [d for _, d in _documents() if d["kind"] == kind]
    return doc


@pytest.mark.parametrize("version", _versions())
def test_manifests_validate(version):
    docs = _documents()
    assert {d["kind"] for _, d in docs} >= {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                                            "ConfigMap", "DaemonSet"}
    for name, doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {doc['kind']} {doc['metadata']['name']} is invalid for Kubernetes {version}:"
                        f" {exc.message} at {'.'.join(map(str, exc.path))}")


def test_validator_catches_a_broken_manifest():
    broken = json.loads(json.dumps(_by_kind("DaemonSet")))
    broken["spec"]["template"]["spec"]["hostPID"] = "yes"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, _versions()[0], strict=True)


def test_daemonset_has_what_the_agent_needs():
    spec = _by_kind("DaemonSet")["spec"]["template"]["spec"]
    [ctr] = spec["containers"]
    assert spec["hostPID"] is True and ctr["securityContext"]["privileged"] is True
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in ctr["volumeMounts"]}
    kubelet_dir = mounts["/var/lib/kubelet/checkpoints"]
    assert volumes[kubelet_dir["name"]]["hostPath"]["path"] == "/var/lib/kubelet/checkpoints"
    assert mounts["/mnt/cedana"]["mountPropagation"] == "Bidirectional"
    assert volumes[mounts["/etc/cedana"]["name"]]["configMap"]["name"] == "cedana-config"
    assert any(v.get("secret", {}).get("secretName") == "cedana-store" for v in volumes.values())
    assert volumes[mounts["/dev/fuse"]["name"]]["hostPath"]["type"] == "CharDevice"


def test_rbac_allows_the_checkpoint_api():
    rules = _by_kind("ClusterRole")["rules"]
    assert {"resources": ["nodes/checkpoint"], "verbs": ["create"], "apiGroups": [""]} in rules
    binding = _by_kind("ClusterRoleBinding")
    assert binding["subjects"][0]["name"] == _by_kind("DaemonSet")["spec"]["template"]["spec"]["serviceAccountName"]


def test_configmap_config_is_accepted_by_cedana(tmp_path):
    (tmp_path / "config.json").write_text(_by_kind("ConfigMap")["data"]["config.json"])
    settings = load_settings(str(tmp_path), environ={})
    assert settings.kubernetes.watch is True
    assert settings.kubernetes.checkpoint_dir == "/var/lib/kubelet/checkpoints"
    assert settings.mount.dir == "/mnt/cedana"
