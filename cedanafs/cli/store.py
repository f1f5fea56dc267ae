"""Checkpoint store commands: `checkpoint ...`, `gc`, `store stats` (cedanafs.app.checkpoints).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Callable

import click

from ..config import format_size
from ..errors import UsageError
from .base import Context, cli, emit, fail, format_table, handle_errors, output_option, pass_ctx
from .output import report as report_result, reports

_store_option = click.option("--store", "store_url", metavar="URL",
                             help="Checkpoint store: a path, file://, s3://bucket/prefix, gs://bucket/prefix"
                                  " (default: config store.url).")


def _checkpoints(ctx: Context, store_url: str | None) -> Any:
    from ..app.checkpoints import open_checkpoints

    return open_checkpoints(ctx.settings, store_url)


def _human(n: int | None) -> str:
    return "-" if n is None else format_size(n)


def _as_record(obj: Any) -> Any:
    import dataclasses

    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


class _Progress:
    """A progress bar on stderr for transfers that take a moment; nothing when stderr is not a tty."""

    MIN_BYTES = 16 << 20

    def __init__(self, total: int, label: str):
        show = sys.stderr.isatty() and total >= self.MIN_BYTES
        self._bar = click.progressbar(length=total, label=label, file=sys.stderr) if show else None

    def __enter__(self) -> Callable[[int], None] | None:
        return self._bar.__enter__().update if self._bar else None

    def __exit__(self, *exc: Any) -> None:
        if self._bar:
            self._bar.__exit__(*exc)


@cli.group()
def checkpoint() -> None:
    """Checkpoints in the store: import, export, list, inspect, verify, delete."""


@checkpoint.command("import")
@click.argument("directory")
@click.option("--job", help="Job the checkpoint belongs to (required for an images directory; for a kubelet"
                            " archive it defaults to NAMESPACE_POD_CONTAINER, or the container's name).")
@click.option("--name", help="Checkpoint name (default: a new id sorting by time).")
@click.option("--format", "fmt", type=click.Choice(["dir", "kubelet"]), default="dir", show_default=True,
              help="dir: a CRIU images DIRECTORY; kubelet: a container checkpoint archive (kubelet, CRI-O,"
                   " containerd, Podman; tar, tar.gz or tar.zst).")
@_store_option
@output_option
@pass_ctx
@handle_errors
def checkpoint_import(ctx: Context, directory: str, job: str | None, name: str | None, fmt: str,
                      store_url: str | None, output: str) -> None:
    """Store a CRIU images DIRECTORY (or a container checkpoint archive) as a new checkpoint of a job."""
    if fmt == "dir" and not job:
        raise UsageError("--job is required to import an images directory")
    with _checkpoints(ctx, store_url) as cps:
        if fmt == "kubelet":
            from ..app.kubelet import import_archive

            m = import_archive(cps, directory, job, name)
        else:
            with _Progress(cps.total_bytes(directory), f"import {job}") as progress:
                m = cps.import_dir(directory, job, name, progress=progress)
    t = m.meta.get("transfer", {})
    data = {"job": m.job, "id": m.id, "files": len(m.files), "logical_bytes": m.size,
            "stored_bytes_added": t.get("stored_bytes"), "new_chunks": t.get("new_chunks"),
            "reused_chunks": t.get("reused_chunks")}
    emit(data, output, lambda d: f"{m.name}: {len(m.files)} files, {_human(m.size)}; added {_human(t.get('stored_bytes'))}"
         f" to the store ({t.get('new_chunks')} new chunks, {t.get('reused_chunks')} reused)")


@checkpoint.command("export")
@click.argument("ref")
@click.argument("dest")
@click.option("--format", "fmt", type=click.Choice(["dir", "kubelet", "oci-image"]), default="dir",
              show_default=True, help="dir: a plain images directory; kubelet: a container checkpoint archive"
                                      " (`podman container restore --import`); oci-image: an OCI image archive"
                                      " holding the checkpoint, for CRI-O, containerd 2.1+ and Podman.")
@click.option("--compression", type=click.Choice(["none", "gzip", "zstd"]), default="none", show_default=True,
              help="Compression of a --format kubelet archive.")
@click.option("--image", help="Image name of a --format oci-image archive"
                              " (default: localhost/cedana-checkpoint/<job>:<id>).")
@_store_option
@reports
@pass_ctx
@handle_errors
def checkpoint_export(ctx: Context, ref: str, dest: str, fmt: str, compression: str, image: str | None,
                      store_url: str | None) -> None:
    """Write checkpoint REF (id, id prefix, job/id, job) as a plain images directory DEST (or an archive)."""
    with _checkpoints(ctx, store_url) as cps:
        if fmt != "dir":
            from ..app import kubelet

            if fmt == "kubelet":
                m = kubelet.export_archive(cps, ref, dest, compression)
                click.echo(f"{m.name} -> {dest} (container checkpoint archive, {compression})")
            else:
                m, name = kubelet.export_oci_image(cps, ref, dest, image)
                click.echo(f"{m.name} -> {dest} (OCI image {name})")
            return
        m = cps.catalog.find(ref)
        with _Progress(m.size, f"export {m.name}") as progress:
            cps.export(m.name, dest, progress=progress)
    report_result({"job": m.job, "id": m.id, "dest": dest, "files": len(m.files), "size": m.size},
                  f"{m.name} -> {dest} ({len(m.files)} files, {_human(m.size)})")


@checkpoint.command("list")
@click.option("--job", help="Only this job's checkpoints.")
@_store_option
@output_option
@pass_ctx
@handle_errors
def checkpoint_list(ctx: Context, job: str | None, store_url: str | None, output: str) -> None:
    """List checkpoints, newest first."""
    with _checkpoints(ctx, store_url) as cps:
        items = cps.list(job)
    rows = [[i.job, i.id, i.created.strftime("%Y-%m-%d %H:%M:%S"), _human(i.size), i.files, i.kind, i.parent or ""]
            for i in items]
    emit([_as_record(i) for i in items], output,
         lambda _: format_table(["JOB", "ID", "CREATED (UTC)", "SIZE", "FILES", "KIND", "PARENT"], rows))


def _container_lines(meta: dict) -> list[str]:
    """What a container checkpoint (`import --format kubelet`) says about its container."""
    k, c = meta.get("kubelet"), meta.get("criu")
    if not k:
        return []
    where = "/".join(p for p in (k.get("namespace"), k.get("pod"), k.get("container")) if p)
    lines = [f"container {where}, image {k.get('image') or '?'}, engine {k.get('engine')}"
             f" (from {k.get('archive')}, {k.get('compression')})"]
    if c:
        lines.append(f"CRIU images: {c['files']} files, {_human(c['bytes'])} ({_human(c['pages_bytes'])} of memory"
                     f" pages), pids {' '.join(map(str, c['pids']))}")
    return lines


def _inspection_text(i: Any) -> str:
    head = [f"{i.kind} {i.source}"]
    if i.kind == "checkpoint":
        head.append(f"created {i.created:%Y-%m-%d %H:%M:%S} UTC on {i.host or '?'}, parent {i.parent or '-'}")
        head += _container_lines(i.meta)
        head.append(f"{len(i.files)} entries, {_human(i.logical_bytes)}; {i.chunk_refs} chunk refs, {i.unique_chunks}"
                    f" distinct, stored {_human(i.stored_bytes)} ({_human(i.exclusive_stored_bytes)} only here)"
                    + (f"; {i.missing_chunks} MISSING" if i.missing_chunks else ""))
    else:
        head += _container_lines(i.meta)
        fmt = f" ({i.format}, {_human(i.archive_bytes)})" if i.kind == "archive" else ""
        head.append(f"{len(i.files)} entries, {_human(i.logical_bytes)}{fmt}")
    rows = [[f.path + (f" -> {f.target}" if f.target else ""), f.type, f"{f.mode:04o}", f.size,
             "inline" if f.inline else (f.chunks if i.kind == "checkpoint" else "")] for f in i.files]
    return "\n".join(head) + "\n\n" + format_table(["PATH", "TYPE", "MODE", "SIZE", "CHUNKS"], rows)


@checkpoint.command("inspect")
@click.argument("ref")
@click.option("--type", "-t", "image_type", type=click.Choice(["ps", "fd", "mem", "rss", "sk"]),
              help="Decode CRIU's images: process tree, open files, memory mappings, resident pages, sockets.")
@_store_option
@output_option
@pass_ctx
@handle_errors
def checkpoint_inspect(ctx: Context, ref: str, image_type: str | None, store_url: str | None, output: str) -> None:
    """Show a checkpoint's files, sizes and chunks; REF may also be an archive path or URL, or a dir."""
    if image_type:
        from .inspect import inspect_images

        return inspect_images(ctx, ref, image_type, store_url, output)
    with _checkpoints(ctx, store_url) as cps:
        info = cps.inspect(ref)
    if info.kind == "archive" and os.path.isfile(ref):  # a container checkpoint archive says what it holds
        from ..app.kubelet import describe_archive

        info = dataclasses.replace(info, meta=describe_archive(ref) or info.meta)
    emit(_as_record(info), output, lambda _: _inspection_text(info))


@checkpoint.command("verify")
@click.argument("ref")
@_store_option
@output_option
@pass_ctx
@handle_errors
def checkpoint_verify(ctx: Context, ref: str, store_url: str | None, output: str) -> None:
    """Read every chunk of checkpoint REF and check every hash."""
    with _checkpoints(ctx, store_url) as cps:
        report = cps.verify(ref, raise_on_error=False)
    if output == "json":
        emit({**_as_record(report), "ok": report.ok}, output)
    if not report.ok:
        fail(report.summary(), 5)
    if output != "json":
        click.echo(f"ok: {report.summary()} ({_human(report.bytes_checked)})")


@checkpoint.command("delete")
@click.argument("ref")
@_store_option
@reports
@pass_ctx
@handle_errors
def checkpoint_delete(ctx: Context, ref: str, store_url: str | None) -> None:
    """Delete checkpoint REF; its chunks are freed by the next `cedana gc`."""
    with _checkpoints(ctx, store_url) as cps:
        m = cps.delete(ref)
    report_result({"job": m.job, "id": m.id, "deleted": True}, f"deleted {m.name}")


@cli.command()
@click.option("--grace", type=float, default=None, metavar="SECONDS",
              help="Keep unreferenced chunks younger than this (default 3600).")
@click.option("--dry-run", is_flag=True, help="Only count what would be deleted.")
@_store_option
@output_option
@pass_ctx
@handle_errors
def gc(ctx: Context, grace: float | None, dry_run: bool, store_url: str | None, output: str) -> None:
    """Delete chunks no checkpoint references (safe while checkpoints are being written)."""
    with _checkpoints(ctx, store_url) as cps:
        report = cps.gc(grace, dry_run=dry_run) if grace is not None else cps.gc(dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    emit(_as_record(report), output, lambda r: f"{verb} {r['deleted']} of {r['chunks_seen']} chunks"
         f" ({_human(r['deleted_bytes'])}); {r['referenced']} referenced, {r['kept_recent']} kept as recent,"
         f" {len(r['live_leases'])} live writers")


@cli.group()
def store() -> None:
    """The checkpoint store itself."""


@store.command("stats")
@_store_option
@output_option
@pass_ctx
@handle_errors
def store_stats(ctx: Context, store_url: str | None, output: str) -> None:
    """Logical and stored bytes, chunks, dedup and compression ratios."""
    with _checkpoints(ctx, store_url) as cps:
        r = cps.store_stats()
    rows = [["store", r.url], ["jobs", r.jobs], ["checkpoints", r.checkpoints],
            ["logical bytes", f"{_human(r.logical_bytes)} ({r.logical_bytes})"],
            ["unique bytes", f"{_human(r.unique_bytes)} ({r.unique_bytes})"],
            ["stored bytes", f"{_human(r.stored_bytes)} ({r.stored_bytes})"],
            ["chunks", f"{r.chunk_count} ({r.referenced_chunks} referenced, {r.unreferenced_chunks} unreferenced,"
                       f" {_human(r.unreferenced_bytes)})"],
            ["dedup ratio", f"{r.dedup_ratio:.2f}"], ["compression ratio", f"{r.compression_ratio:.2f}"]]
    emit(_as_record(r), output, lambda _: format_table(["", ""], rows).split("\n", 1)[1])

# --- mount commands: mount, umount (cedanafs.app.mount) ---


@store.group("key")
def store_key() -> None:
    """The key of an encrypted store (config store.key_file): move it to another machine."""


@store_key.command("export")
@click.option("--out", "dest", metavar="FILE", help="Write the key to this new file (0600) instead of stdout.")
@pass_ctx
@handle_errors
def store_key_export(ctx: Context, dest: str | None) -> None:
    """Print the store key (keep it secret: it reads every checkpoint in the store)."""
    from ..app.storekey import export_key

    text, info = export_key(ctx.settings, dest)
    if dest:
        click.echo(f"key {info.key_id} written to {dest}")
    else:
        click.echo(text, nl=False)


@store_key.command("import")
@click.argument("file")
@_store_option
@click.option("--force", is_flag=True, help="Replace another key already in store.key_file (it is kept as .old).")
@pass_ctx
@handle_errors
def store_key_import(ctx: Context, file: str, store_url: str | None, force: bool) -> None:
    """Install a key exported on another machine as this machine's store.key_file."""
    from ..app.storekey import import_key

    info = import_key(ctx.settings, file, store_url, force)
    click.echo(f"key {info.key_id} installed at {info.path}")
