"""Containers: `run runc`, `manage runc`, `dump runc`, `restore runc`, and the containerd commands
(cedanafs.app.containers). `run`/`manage` make jobs through the daemon; dump and restore run here.
"""

from __future__ import annotations

import sys

import click

from ..config import COMPRESSIONS
from .base import (Context, _daemon, _daemon_listening, dump, handle_errors, manage_group, pass_ctx, restore,
                   run_group)
from .output import report, reports

DEFAULT_RUNC_ROOT = "/run/runc"
root_option = click.option("--root", default=DEFAULT_RUNC_ROOT, show_default=True, help="runc's state root.")


def _runc_flags(func):
    options = [
        click.option("--tcp-established", is_flag=True, help="Checkpoint/restore established TCP connections."),
        click.option("--file-locks", is_flag=True, help="Checkpoint/restore file locks."),
        click.option("--shell-job", is_flag=True, help="The container shares this terminal (runc --shell-job)."),
        click.option("--ext-unix-sk", is_flag=True, help="Allow external unix sockets (runc --ext-unix-sk)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@run_group.command("runc")
@click.option("--bundle", "-b", required=True, help="OCI bundle directory (config.json + rootfs).")
@click.option("--id", "-i", "cid", required=True, help="Container id.")
@click.option("--jid", "-j", help="Job id (default: a readable random one).")
@root_option
@click.option("--detach", "-d", is_flag=True, help="Without a daemon: do not stay attached to the container.")
@click.option("-o", "--out", "log_path", help="Output file (default /var/log/cedana-output-<JID or ID>.log).")
@pass_ctx
@handle_errors
def run_runc_cmd(ctx: Context, bundle: str, cid: str, jid: str | None, root: str, detach: bool,
                 log_path: str | None) -> None:
    """Run a runc container: a managed job through the daemon, else here."""
    import os

    from ..app.containers import LOG_TEMPLATE, run_runc
    from ..app.jobs import new_jid
    from ..catalog import check_job_name

    if _daemon_listening(ctx):
        jid = check_job_name(jid) if jid else new_jid()
        log_file = os.path.abspath(log_path or LOG_TEMPLATE.format(id=jid))
        params = {"bundle": os.path.abspath(bundle), "id": cid, "root": root, "jid": jid, "log": log_file}
        result = _daemon(ctx, "runc.run", params)
        click.echo(f"Started job {result['job']} (runc container {cid}, PID {result['pid']}), output in {log_file}")
        return
    result = run_runc(root, bundle, cid, log_path, detach)
    if not detach:
        sys.exit(result)
    click.echo(f"Started runc container {cid} (PID {result})")


@manage_group.command("runc")
@click.argument("cid", metavar="ID")
@root_option
@click.option("--jid", "-j", help="Job id (default: a readable random one).")
@click.option("-o", "--out", "log_path", help="Where its output goes once restored (default"
              " /var/log/cedana-output-<JID>.log).")
@pass_ctx
@handle_errors
def manage_runc_cmd(ctx: Context, cid: str, root: str, jid: str | None, log_path: str | None) -> None:
    """Manage the running runc container ID as a job."""
    import os

    from ..app.containers import LOG_TEMPLATE
    from ..app.jobs import new_jid
    from ..catalog import check_job_name

    jid = check_job_name(jid) if jid else new_jid()
    log_file = os.path.abspath(log_path or LOG_TEMPLATE.format(id=jid))
    result = _daemon(ctx, "runc.manage", {"id": cid, "root": root, "jid": jid, "log": log_file})
    click.echo(f"Managing runc container {cid} as job {result['job']}")


@dump.command("runc")
@click.argument("cid", metavar="ID")
@root_option
@click.option("-d", "--dir", "directory", help="Parent directory, the mount's jobs/<job>, or s3:// / gs:// URL.")
@click.option("--name", help="Checkpoint name (default dump-runc-<unixnano>).")
@click.option("--compression", type=click.Choice(COMPRESSIONS), help="Archive format (default checkpoint.compression).")
@click.option("--leave-running/--no-leave-running", default=None, help="Keep the container running after the dump.")
@click.option("--streams", type=int, default=0, help="Parallel transfer streams for the store.")
@_runc_flags
@reports
@pass_ctx
@handle_errors
def dump_runc_cmd(ctx: Context, cid: str, root: str, directory: str | None, name: str | None,
                  compression: str | None, leave_running: bool | None, streams: int, tcp_established: bool,
                  file_locks: bool, shell_job: bool, ext_unix_sk: bool) -> None:
    """Checkpoint the runc container ID."""
    from ..app.containers import RuncDumpRequest, dump_runc

    result = dump_runc(ctx.settings, RuncDumpRequest(
        id=cid, root=root, dir=directory, name=name, compression=compression, leave_running=leave_running,
        tcp_established=tcp_established, file_locks=file_locks, shell_job=shell_job, ext_unix_sk=ext_unix_sk,
        streams=streams))
    report(result.to_dict(), f"Dumped runc container {cid} to {result.path}")


@restore.command("runc")
@click.option("-p", "--path", required=True, help="Checkpoint directory or archive (local, s3:// or gs://).")
@click.option("--bundle", "-b", help="OCI bundle to restore into (default: the dumped one).")
@click.option("--id", "-i", "cid", help="Container id (default: the dumped one).")
@click.option("--root", help="runc's state root (default: the dumped one).")
@click.option("--detach", "-d", is_flag=True, help="Detach: the container's output goes to --out.")
@click.option("-o", "--out", "log_path", help="Output file when detached (default /var/log/cedana-output-<ID>.log).")
@click.option("--lazy", is_flag=True, help="Restore with lazy pages from a checkpoint in the mount.")
@click.option("--pid-file", help="Write the restored container's init PID to this file.")
@click.option("--streams", type=int, default=0, help="Parallel reads of the images ahead of CRIU.")
@_runc_flags
@pass_ctx
@handle_errors
def restore_runc_cmd(ctx: Context, path: str, bundle: str | None, cid: str | None, root: str | None, detach: bool,
                     log_path: str | None, lazy: bool, pid_file: str | None, streams: int, tcp_established: bool,
                     file_locks: bool, shell_job: bool, ext_unix_sk: bool) -> None:
    """Restore a runc container from the checkpoint at --path."""
    from ..app.containers import RuncRestoreRequest, restore_runc

    result = restore_runc(ctx.settings, RuncRestoreRequest(
        path=path, id=cid, bundle=bundle, root=root, detach=detach, out=log_path, lazy=lazy, pid_file=pid_file,
        tcp_established=tcp_established, file_locks=file_locks, shell_job=shell_job, ext_unix_sk=ext_unix_sk,
        streams=streams))
    if result.exit_code is not None:
        sys.exit(result.exit_code)
    click.echo(f"Restored runc container {cid or 'from ' + path} (PID {result.pid})")


# --- containerd ---

DEFAULT_ADDRESS = "/run/containerd/containerd.sock"
address_option = click.option("--address", "-a", default=DEFAULT_ADDRESS, show_default=True,
                              help="containerd's socket.")
namespace_option = click.option("--namespace", "-n", default="default", show_default=True,
                                help="containerd namespace.")


@dump.command("containerd")
@click.argument("cid", metavar="ID")
@address_option
@namespace_option
@click.option("-d", "--dir", "directory", help="Parent directory, the mount's jobs/<job>, or s3:// / gs:// URL.")
@click.option("--name", help="Checkpoint name (default dump-containerd-<unixnano>).")
@click.option("--compression", type=click.Choice(COMPRESSIONS), help="Archive format (default checkpoint.compression).")
@click.option("--leave-running/--no-leave-running", default=None, help="Keep the container running after the dump.")
@click.option("--streams", type=int, default=0, help="Parallel transfer streams for the store.")
@click.option("--tcp-established", is_flag=True, help="Checkpoint established TCP connections.")
@reports
@pass_ctx
@handle_errors
def dump_containerd_cmd(ctx: Context, cid: str, address: str, namespace: str, directory: str | None,
                        name: str | None, compression: str | None, leave_running: bool | None, streams: int,
                        tcp_established: bool) -> None:
    """Checkpoint the containerd container ID (task memory and writable layer)."""
    from ..app.containers import ContainerdDumpRequest, dump_containerd

    result = dump_containerd(ctx.settings, ContainerdDumpRequest(
        id=cid, address=address, namespace=namespace, dir=directory, name=name, compression=compression,
        leave_running=leave_running, tcp_established=tcp_established, streams=streams))
    report(result.to_dict(), f"Dumped containerd container {cid} to {result.path}")


@restore.command("containerd")
@click.option("-p", "--path", required=True, help="Checkpoint directory or archive (local, s3:// or gs://).")
@click.option("--id", "-i", "cid", required=True, help="Id of the restored container.")
@click.option("--image", help="Base image to restore onto (default: the one the container ran).")
@click.option("--address", "-a", help="containerd's socket (default: the dumped one, else /run/containerd/...).")
@click.option("--namespace", "-n", help="containerd namespace (default: the dumped one).")
@click.option("-o", "--out", "log_path", help="Where its output goes (default /var/log/cedana-output-<ID>.log).")
@click.option("--tcp-established", is_flag=True, help="Restore established TCP connections (default: as dumped).")
@click.option("--lazy", is_flag=True, help="Not supported for containerd: fails and says why.")
@pass_ctx
@handle_errors
def restore_containerd_cmd(ctx: Context, path: str, cid: str, image: str | None, address: str | None,
                           namespace: str | None, log_path: str | None, tcp_established: bool, lazy: bool) -> None:
    """Restore a containerd container from the checkpoint at --path, running under containerd as --id."""
    from ..app.containers import ContainerdRestoreRequest, restore_containerd

    result = restore_containerd(ctx.settings, ContainerdRestoreRequest(
        path=path, id=cid, image=image, address=address, namespace=namespace, out=log_path,
        tcp_established=tcp_established, lazy=lazy))
    click.echo(f"Restored containerd container {cid} (PID {result.pid})")


@manage_group.command("containerd")
@click.argument("cid", metavar="ID")
@address_option
@namespace_option
@click.option("--jid", "-j", help="Job id (default: a readable random one).")
@click.option("-o", "--out", "log_path", help="Where its output goes once restored (default"
              " /var/log/cedana-output-<JID>.log).")
@pass_ctx
@handle_errors
def manage_containerd_cmd(ctx: Context, cid: str, address: str, namespace: str, jid: str | None,
                          log_path: str | None) -> None:
    """Manage the running containerd container ID as a job."""
    import os

    from ..app.containers import LOG_TEMPLATE
    from ..app.jobs import new_jid
    from ..catalog import check_job_name

    jid = check_job_name(jid) if jid else new_jid()
    log_file = os.path.abspath(log_path or LOG_TEMPLATE.format(id=jid))
    result = _daemon(ctx, "containerd.manage", {"id": cid, "address": os.path.abspath(address),
                                                "namespace": namespace, "jid": jid, "log": log_file})
    click.echo(f"Managing containerd container {cid} as job {result['job']}")
