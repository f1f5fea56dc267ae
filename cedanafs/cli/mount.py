"""`cedana mount`, `umount` and `checkpoint seal` (cedanafs.app.mount).
"""

from __future__ import annotations

import click

from .base import Context, cli, handle_errors, pass_ctx
from .store import checkpoint

@cli.command("mount")
@click.argument("mountpoint", type=click.Path())
@click.option("--store", "store_url", help="Store URL (a dir, s3://bucket/prefix, gs://...); default store.url.")
@click.option("--foreground", "-f", is_flag=True, help="Serve in this process until unmounted.")
@click.option("--autoseal-after", type=float, default=10.0, show_default=True,
              help="Seconds a checkpoint dir with inventory.img and no open files must stay unchanged"
                   " before it is sealed (imports by cp/rsync); 0 = only explicit sealing.")
@click.option("--log-file", type=click.Path(), help="Where the background server logs (default: next to db.path).")
@pass_ctx
@handle_errors
def mount_cmd(ctx: Context, mountpoint: str, store_url: str | None, foreground: bool, autoseal_after: float,
              log_file: str | None) -> None:
    """Mount the checkpoint store at MOUNTPOINT (jobs/<job>/<checkpoint>/...)."""
    from ..app import mount as app_mount

    app_mount.mount(ctx.settings, mountpoint, store_url=store_url, foreground=foreground,
                    autoseal_after=autoseal_after, log_file=log_file)


@cli.command("umount")
@click.argument("mountpoint", type=click.Path())
@click.option("--lazy", "-z", is_flag=True, help="Detach now even if busy; finish when no longer used.")
@handle_errors
def umount_cmd(mountpoint: str, lazy: bool) -> None:
    """Unmount a cedanafs mount (unsealed checkpoints in it are discarded)."""
    from ..app import mount as app_mount

    app_mount.umount(mountpoint, lazy=lazy)


@click.command("seal")
@click.argument("path", type=click.Path())
@click.option("--kind", help="Kind recorded in the manifest (process, import, ...).")
@handle_errors
def seal_cmd(path: str, kind: str | None) -> None:
    """Seal the checkpoint directory PATH in a mount: commit it; it becomes read-only."""
    from ..app import mount as app_mount

    click.echo(app_mount.seal(path, kind=kind))


checkpoint.add_command(seal_cmd)
