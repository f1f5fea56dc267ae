"""Kubernetes commands: `k8s checkpoint` (cedanafs.app.k8s)."""

from __future__ import annotations

import click

from .base import Context, cli, emit, handle_errors, output_option, pass_ctx


@cli.group()
def k8s() -> None:
    """Kubernetes: checkpoint a pod's container through its node's kubelet."""


@k8s.command("checkpoint")
@click.argument("container")
@click.option("--node", help="Node whose kubelet runs the pod: HOST or HOST:PORT (default: $NODE_NAME, port 10250).")
@click.option("--kubelet-url", help="The kubelet's URL (instead of --node), e.g. https://10.0.0.5:10250.")
@click.option("--token-file", help="Bearer token file (default: the pod's service account token).")
@click.option("--ca-file", help="CA of the kubelet's serving certificate (default: the service account's ca.crt).")
@click.option("--insecure-skip-tls-verify", "insecure", is_flag=True,
              help="Do not verify the kubelet's certificate (self-signed kubelet certificates).")
@click.option("--timeout", type=int, default=0, metavar="SECONDS",
              help="The kubelet's checkpoint timeout (default: the kubelet's own).")
@click.option("--checkpoint-dir", help="The kubelet's checkpoint directory as mounted here"
                                       " (default: config kubernetes.checkpoint_dir).")
@click.option("--job", help="Job to store the checkpoint under (default: NAMESPACE_POD_CONTAINER).")
@click.option("--store", "store_url", metavar="URL", help="Checkpoint store (default: config store.url).")
@output_option
@pass_ctx
@handle_errors
def k8s_checkpoint(ctx: Context, container: str, node: str | None, kubelet_url: str | None, token_file: str | None,
                   ca_file: str | None, insecure: bool, timeout: int, checkpoint_dir: str | None, job: str | None,
                   store_url: str | None, output: str) -> None:
    """Checkpoint CONTAINER (NAMESPACE/POD/CONTAINER) with the kubelet's API and store the archive."""
    from ..app import k8s as app_k8s

    ref = app_k8s.ContainerRef.parse(container)
    target = app_k8s.kubelet_target(node, kubelet_url, token_file=token_file, ca_file=ca_file, insecure=insecure)
    stored = app_k8s.checkpoint_container(ctx.settings, ref, target, job=job, timeout=timeout,
                                          checkpoint_dir=checkpoint_dir, store_url=store_url)
    data = [{"job": m.job, "id": m.id, "archive": m.meta.get("kubelet", {}).get("archive"),
             "stored_bytes_added": m.meta.get("transfer", {}).get("stored_bytes")} for m in stored]
    emit(data, output, lambda d: "\n".join(f"{r['archive']} -> {r['job']}/{r['id']}" for r in d))
