"""`cedana mount`, `umount` and `checkpoint seal` (cedanafs.app.mount).
"""

from __future__ import annotations

import click

from .base import Context, cli, handle_errors, pass_ctx
from .output import report, reports, wants_json
from .store import checkpoint

@cli.command("mount")
@click.argument("mountpoint", type=click.Path())
@click.option("--store", "store_url", help="Store URL (a dir, s3://bucket/prefix, gs://...); default store.url.")
@click.option("--foreground", "-f", is_flag=True, help="Serve in this process until unmounted.")
@click.option("--autoseal-after", type=float, default=10.0, show_default=True,
              help="Seconds a checkpoint dir with inventory.img and no open files must stay unchanged"
                   " before it is sealed (imports by cp/rsync); 0 = only explicit sealing.")
@click.option("--log-file", type=click.Path(), help="Where the background server logs (default: next to db.path).")
@reports
@pass_ctx
@handle_errors
def mount_cmd(ctx: Context, mountpoint: str, store_url: str | None, foreground: bool, autoseal_after: float,
              log_file: str | None) -> None:
    """Mount the checkpoint store at MOUNTPOINT (jobs/<job>/<checkpoint>/...)."""
    from ..app import mount as app_mount

    app_mount.mount(ctx.settings, mountpoint, store_url=store_url, foreground=foreground,
                    autoseal_after=autoseal_after, log_file=log_file)
    if not foreground and wants_json():
        report({"mountpoint": mountpoint, "store": store_url or ctx.settings.store.url}, "")


@cli.command("umount")
@click.argument("mountpoint", type=click.Path())
@click.option("--lazy", "-z", is_flag=True, help="Detach now even if busy; finish when no longer used.")
@reports
@pass_ctx
@handle_errors
def umount_cmd(ctx: Context, mountpoint: str, lazy: bool) -> None:
    """Unmount a cedanafs mount (unsealed checkpoints in it are discarded); not the daemon's own."""
    from ..app import mount as app_mount

    _refuse_daemon_mount(ctx, mountpoint)
    app_mount.umount(mountpoint, lazy=lazy)
    if wants_json():
        report({"mountpoint": mountpoint, "unmounted": True}, "")


def _refuse_daemon_mount(ctx: Context, mountpoint: str) -> None:
    """The daemon's jobs dump into its mount: unmounting it under the daemon would leave them nowhere."""
    import os

    from ..errors import UsageError
    from .base import _daemon, _daemon_listening

    if not _daemon_listening(ctx):
        return
    mount = _daemon(ctx, "daemon.health", timeout=30)["mount"]
    if os.path.realpath(mount["dir"]) == os.path.realpath(mountpoint):
        raise UsageError(f"{mountpoint} is the cedana daemon's mount: stop the daemon instead"
                         " (`cedana daemon stop`), it unmounts it and leaves the jobs running")


@click.command("seal")
@click.argument("path", type=click.Path())
@click.option("--kind", help="Kind recorded in the manifest (process, import, ...).")
@reports
@handle_errors
def seal_cmd(path: str, kind: str | None) -> None:
    """Seal the checkpoint directory PATH in a mount: commit it; it becomes read-only."""
    from ..app import mount as app_mount

    sealed = app_mount.seal(path, kind=kind)
    report({"path": path, "sealed": sealed}, str(sealed))


checkpoint.add_command(seal_cmd)
