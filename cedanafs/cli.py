"""The `cedana` command: a thin click face over cedanafs.app.

Each command parses its options, calls one use case in cedanafs.app and prints the result.
User errors (CedanaError) become one line on stderr and the error's exit code; nothing else
is caught here except to report it as a bug in one line (with the traceback only in debug logs).
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from typing import Any, Callable

import click

from . import __version__
from .config import COMPRESSIONS, Settings, format_size, load_settings
from .errors import CedanaError
from .log import setup_logging

log = logging.getLogger(__name__)


class Context:
    """What every command gets: the settings for this call."""

    def __init__(self, config_dir: str | None, config_json: str | None):
        self._config_dir = config_dir
        self._config_json = config_json
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self._config_dir, self._config_json)
        return self._settings


def fail(message: str, code: int) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def handle_errors(func: Callable) -> Callable:
    """Turn CedanaError into one line and its exit code; any other exception into one line too."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except CedanaError as err:
            fail(str(err), err.exit_code)
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except OSError as err:  # disk full, permissions, I/O errors: the system's own words
            log.debug("system error", exc_info=True)
            where = f"{err.filename}: " if err.filename else ""
            fail(f"{where}{err.strerror or err}", 74)  # EX_IOERR
        except Exception as err:  # noqa: BLE001 - the last line of defence for the user
            log.debug("unexpected error", exc_info=True)
            fail(f"internal error: {type(err).__name__}: {err} (run with CEDANA_LOG_LEVEL=debug for details)", 70)

    return wrapper


pass_ctx = click.make_pass_decorator(Context)


def emit(data: Any, output: str, table: Callable[[Any], str] | None = None) -> None:
    """Print data as JSON when asked (--output json), else as the given table text."""
    if output == "json" or table is None:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        click.echo(table(data))


def format_table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [headers] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


output_option = click.option(
    "--output", "-O", type=click.Choice(["table", "json"]), default="table", show_default=True,
    help="Output format.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config-dir", envvar="CEDANA_CONFIG_DIR", help="Directory holding config.json.")
@click.option("--config", "config_json", help="JSON config overrides for this call.")
@click.option("--log-level", envvar="CEDANA_LOG_LEVEL", help="debug, info, warning, error.")
@click.version_option(__version__, prog_name="cedana")
@click.pass_context
def cli(ctx: click.Context, config_dir: str | None, config_json: str | None, log_level: str | None) -> None:
    """cedana: checkpoint and restore Linux processes with CRIU."""
    setup_logging(log_level or "error")  # a command speaks through its one-line result or error
    ctx.obj = Context(config_dir, config_json)


@cli.command()
def version() -> None:
    """Print the version."""
    click.echo(f"cedana {__version__}")


# --- process commands: check, dump, restore (cedanafs.app.process) ---


def _criu_flags(func: Callable) -> Callable:
    """The CRIU flags shared by dump and restore (DESIGN.md section 2)."""
    options = [
        click.option("--tcp-established", is_flag=True, help="Checkpoint/restore established TCP connections."),
        click.option("--file-locks", is_flag=True, help="Checkpoint/restore file locks."),
        click.option("--external", multiple=True, help="External resource (repeatable), as CRIU's --external."),
        click.option("--shell-job/--no-shell-job", default=None,
                     help="Process is a shell job (default: auto, when it is not a session leader)."),
        click.option("--link-remap", is_flag=True, help="Allow link remapping of deleted/unlinked files."),
        click.option("--criu-opts", help="Extra CRIU RPC options as a JSON object."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@cli.command()
@click.option("--full", is_flag=True, help="Also run CRIU's extended checks.")
@output_option
@pass_ctx
@handle_errors
def check(ctx: Context, full: bool, output: str) -> None:
    """Check that this machine can checkpoint and restore."""
    from .app.check import ready, run_checks

    items = run_checks(ctx.settings, full=full)
    rows = [[i.name, "ok" if i.ok else ("MISSING" if i.required else "warning"), i.detail, "" if i.ok else i.fix]
            for i in items]
    emit([i.__dict__ for i in items], output, lambda _: format_table(["CHECK", "STATUS", "DETAIL", "NEXT STEP"], rows))
    if not ready(items):
        sys.exit(8)


@cli.group()
def dump() -> None:
    """Checkpoint a process (or job)."""


@dump.command("process")
@click.argument("pid", type=int)
@click.option("-d", "--dir", "directory", help="Parent directory (or s3:// / gs:// URL); default checkpoint.dir.")
@click.option("--name", help="Checkpoint name (default dump-process-<unixnano>).")
@click.option("--compression", type=click.Choice(COMPRESSIONS), help="Archive format (default checkpoint.compression).")
@click.option("--leave-running/--no-leave-running", default=None, help="Keep the process running after the dump.")
@click.option("--skip-in-flight", is_flag=True, help="Skip in-flight TCP connections.")
@click.option("--streams", type=int, default=0, help="Parallel transfer streams for remote storage.")
@click.option("--no-server", is_flag=True, help="Do the dump in this process, not through the daemon.")
@click.option("--result-file", help="Write the result as JSON to this file.")
@_criu_flags
@pass_ctx
@handle_errors
def dump_process_cmd(ctx: Context, pid: int, directory: str | None, name: str | None, compression: str | None,
                     leave_running: bool | None, skip_in_flight: bool, streams: int, no_server: bool,
                     result_file: str | None, tcp_established: bool, file_locks: bool, external: tuple[str, ...],
                     shell_job: bool | None, link_remap: bool, criu_opts: str | None) -> None:
    """Checkpoint process PID (and its children)."""
    from .app.process import DumpRequest, dump_process, parse_criu_opts

    req = DumpRequest(
        pid=pid, dir=directory, name=name, compression=compression, leave_running=leave_running,
        tcp_established=tcp_established, skip_in_flight=skip_in_flight, file_locks=file_locks,
        external=external, shell_job=shell_job, link_remap=link_remap, criu_opts=parse_criu_opts(criu_opts),
        streams=streams,
    )
    result = None if no_server else _dump_via_daemon(ctx, req)
    result = result or dump_process(ctx.settings, req)
    if result_file:
        with open(result_file, "w") as f:
            json.dump(result.to_dict(), f, indent=2)
    click.echo(f"Dumped PID {pid} to {result.path}")


@cli.group()
def restore() -> None:
    """Restore a process (or job) from a checkpoint."""


@restore.command("process")
@click.option("-p", "--path", required=True, help="Checkpoint directory or archive (local, s3:// or gs://).")
@click.option("--pid-file", help="Write the restored process's PID to this file.")
@click.option("--no-server", is_flag=True, help="Restore as a child of this command, stdio attached; exit with its code.")
@click.option("-a", "--attach", is_flag=True, help="Same as --no-server: stay attached to the restored process.")
@click.option("--tcp-close", is_flag=True, help="Restore TCP connections closed.")
@click.option("--leave-stopped", is_flag=True, help="Leave the restored process stopped.")
@click.option("--lazy", is_flag=True, help="Restore with lazy pages (memory arrives on demand).")
@click.option("--streams", type=int, default=0, help="Parallel transfer streams for remote storage.")
@_criu_flags
@pass_ctx
@handle_errors
def restore_process_cmd(ctx: Context, path: str, pid_file: str | None, no_server: bool, attach: bool,
                        tcp_close: bool, leave_stopped: bool, lazy: bool, streams: int, tcp_established: bool,
                        file_locks: bool, external: tuple[str, ...], shell_job: bool | None, link_remap: bool,
                        criu_opts: str | None) -> None:
    """Restore a process from the checkpoint at --path."""
    from .app.process import RestoreRequest, parse_criu_opts, restore_process

    req = RestoreRequest(
        path=path, no_server=no_server or attach, lazy=lazy, pid_file=pid_file, tcp_established=tcp_established,
        tcp_close=tcp_close, leave_stopped=leave_stopped, file_locks=file_locks, external=external,
        shell_job=shell_job, link_remap=link_remap, criu_opts=parse_criu_opts(criu_opts), streams=streams,
    )
    result = None if req.no_server else _restore_via_daemon(ctx, req)
    result = result or restore_process(ctx.settings, req)
    if result.exit_code is not None:
        sys.exit(result.exit_code)
    click.echo(f"Restored PID {result.pid}")


# --- checkpoint store commands: checkpoint, gc, store (cedanafs.app.checkpoints) ---

_store_option = click.option("--store", "store_url", metavar="URL",
                             help="Checkpoint store: a path, file://, s3://bucket/prefix, gs://bucket/prefix"
                                  " (default: config store.url).")


def _checkpoints(ctx: Context, store_url: str | None) -> Any:
    from .app.checkpoints import open_checkpoints

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
@click.option("--job", required=True, help="Job the checkpoint belongs to.")
@click.option("--name", help="Checkpoint name (default: a new id sorting by time).")
@_store_option
@output_option
@pass_ctx
@handle_errors
def checkpoint_import(ctx: Context, directory: str, job: str, name: str | None, store_url: str | None,
                      output: str) -> None:
    """Store a CRIU images DIRECTORY as a new checkpoint of a job."""
    with _checkpoints(ctx, store_url) as cps:
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
@_store_option
@pass_ctx
@handle_errors
def checkpoint_export(ctx: Context, ref: str, dest: str, store_url: str | None) -> None:
    """Write checkpoint REF (id, id prefix, job/id, job) as a plain images directory DEST."""
    with _checkpoints(ctx, store_url) as cps:
        m = cps.catalog.find(ref)
        with _Progress(m.size, f"export {m.name}") as progress:
            cps.export(m.name, dest, progress=progress)
    click.echo(f"{m.name} -> {dest} ({len(m.files)} files, {_human(m.size)})")


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


def _inspection_text(i: Any) -> str:
    head = [f"{i.kind} {i.source}"]
    if i.kind == "checkpoint":
        head.append(f"created {i.created:%Y-%m-%d %H:%M:%S} UTC on {i.host or '?'}, parent {i.parent or '-'}")
        head.append(f"{len(i.files)} entries, {_human(i.logical_bytes)}; {i.chunk_refs} chunk refs, {i.unique_chunks}"
                    f" distinct, stored {_human(i.stored_bytes)} ({_human(i.exclusive_stored_bytes)} only here)"
                    + (f"; {i.missing_chunks} MISSING" if i.missing_chunks else ""))
    else:
        fmt = f" ({i.format}, {_human(i.archive_bytes)})" if i.kind == "archive" else ""
        head.append(f"{len(i.files)} entries, {_human(i.logical_bytes)}{fmt}")
    rows = [[f.path + (f" -> {f.target}" if f.target else ""), f.type, f"{f.mode:04o}", f.size,
             "inline" if f.inline else (f.chunks if i.kind == "checkpoint" else "")] for f in i.files]
    return "\n".join(head) + "\n\n" + format_table(["PATH", "TYPE", "MODE", "SIZE", "CHUNKS"], rows)


@checkpoint.command("inspect")
@click.argument("ref")
@_store_option
@output_option
@pass_ctx
@handle_errors
def checkpoint_inspect(ctx: Context, ref: str, store_url: str | None, output: str) -> None:
    """Show a checkpoint's files, sizes and chunks; REF may also be an archive path or URL, or a dir."""
    with _checkpoints(ctx, store_url) as cps:
        info = cps.inspect(ref)
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
@pass_ctx
@handle_errors
def checkpoint_delete(ctx: Context, ref: str, store_url: str | None) -> None:
    """Delete checkpoint REF; its chunks are freed by the next `cedana gc`."""
    with _checkpoints(ctx, store_url) as cps:
        m = cps.delete(ref)
    click.echo(f"deleted {m.name}")


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
    from .app import mount as app_mount

    app_mount.mount(ctx.settings, mountpoint, store_url=store_url, foreground=foreground,
                    autoseal_after=autoseal_after, log_file=log_file)


@cli.command("umount")
@click.argument("mountpoint", type=click.Path())
@click.option("--lazy", "-z", is_flag=True, help="Detach now even if busy; finish when no longer used.")
@handle_errors
def umount_cmd(mountpoint: str, lazy: bool) -> None:
    """Unmount a cedanafs mount (unsealed checkpoints in it are discarded)."""
    from .app import mount as app_mount

    app_mount.umount(mountpoint, lazy=lazy)


@click.command("seal")
@click.argument("path", type=click.Path())
@click.option("--kind", help="Kind recorded in the manifest (process, import, ...).")
@handle_errors
def seal_cmd(path: str, kind: str | None) -> None:
    """Seal the checkpoint directory PATH in a mount: commit it; it becomes read-only."""
    from .app import mount as app_mount

    click.echo(app_mount.seal(path, kind=kind))


if isinstance(cli.commands.get("checkpoint"), click.Group):
    cli.commands["checkpoint"].add_command(seal_cmd)
else:
    cli.add_command(seal_cmd)

# --- daemon and job commands (cedanafs.daemon) ---


def _daemon(ctx: Context, method: str, params: dict | None = None, fds: tuple[int, ...] = (),
            timeout: float | None = 3600.0) -> Any:
    """One call to the daemon at config `address`; its errors come back as the same CedanaError."""
    from .daemon import client

    return client.call(ctx.settings.address, method, params, fds=fds, timeout=timeout)


def _daemon_listening(ctx: Context) -> bool:
    from .daemon import client

    return client.is_listening(ctx.settings.address)


def _local_path(path: str | None) -> str | None:
    """Paths go to the daemon absolute (it does not share our cwd); URLs as they are."""
    import os

    return path if not path or "://" in path else os.path.abspath(path)


def _dump_via_daemon(ctx: Context, req: Any) -> Any:
    """`dump process` through the daemon when one listens; None to do it in this process."""
    import dataclasses

    from .app.process import DumpResult

    if not _daemon_listening(ctx):
        return None
    s = ctx.settings
    req = dataclasses.replace(
        req, dir=_local_path(req.dir or s.checkpoint.dir or "/tmp"),
        compression=req.compression or s.checkpoint.compression or "none",
        leave_running=s.criu.leave_running if req.leave_running is None else req.leave_running,
    )
    return DumpResult(**_daemon(ctx, "process.dump", dataclasses.asdict(req)))


def _restore_via_daemon(ctx: Context, req: Any) -> Any:
    """`restore process` through the daemon when one listens; None to do it in this process."""
    import dataclasses

    from .app.process import RestoreResult

    if not _daemon_listening(ctx):
        return None
    sent = dataclasses.replace(req, path=_local_path(req.path), pid_file=None)
    result = RestoreResult(pid=int(_daemon(ctx, "process.restore", dataclasses.asdict(sent))["pid"]))
    if req.pid_file:
        with open(req.pid_file, "w") as f:
            f.write(f"{result.pid}\n")
    return result


@cli.group("daemon")
def daemon_group() -> None:
    """Run and check the cedana daemon (jobs, catalog and the mount)."""


@daemon_group.command("start")
@pass_ctx
@handle_errors
def daemon_start(ctx: Context) -> None:
    """Run the daemon in the foreground (systemd: contrib/cedana.service); SIGTERM stops it."""
    from .daemon.service import start

    level = click.get_current_context().find_root().params.get("log_level")
    setup_logging(level or "info")  # a service logs what it does unless told otherwise
    start(ctx.settings)


@daemon_group.command("check")
@output_option
@pass_ctx
@handle_errors
def daemon_check(ctx: Context, output: str) -> None:
    """Report the daemon's health; non-zero exit when it is not healthy."""
    info = _daemon(ctx, "daemon.health", timeout=30)
    mount = info["mount"]
    rows = [["daemon", "ok", f"pid {info['pid']}, version {info['version']}, up {info['uptime']}s"],
            ["socket", "ok", info["address"]],
            ["mount", "ok" if mount["mounted"] else "DOWN", f"{mount['dir']} (store {info['store']})"],
            ["jobs", "ok", str(info["jobs"])]]
    emit(info, output, lambda _: format_table(["CHECK", "STATUS", "DETAIL"], rows))
    if not info.get("healthy"):
        sys.exit(8)


@cli.group("run")
def run_group() -> None:
    """Start a managed job."""


@run_group.command("process", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--jid", "-j", help="Job id (default: a readable random one).")
@click.option("-o", "--out", "log_path", help="Output file (default /var/log/cedana-output-<JID>.log).")
@click.option("-a", "--attach", is_flag=True, help="Use this terminal's stdio and exit with the job's exit code.")
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
@pass_ctx
@handle_errors
def run_process(ctx: Context, jid: str | None, log_path: str | None, attach: bool, cmd: tuple[str, ...]) -> None:
    """Run CMD as a managed job: a new session, this cwd and environment."""
    import os

    from .app.jobs import LOG_TEMPLATE, new_jid
    from .catalog import check_job_name
    from .errors import UsageError

    if attach and log_path:
        raise UsageError("--attach and --out exclude each other")
    jid = check_job_name(jid) if jid else new_jid()
    params = {"cmd": list(cmd), "jid": jid, "cwd": os.getcwd(), "env": dict(os.environ), "attach": attach}
    if attach:
        result = _daemon(ctx, "job.run", params, fds=(0, 1, 2))
        sys.exit(_wait_attached(ctx, jid, result["pid"]))
    log_file = os.path.abspath(log_path or LOG_TEMPLATE.format(jid=jid))
    fd = _open_log(log_file)
    try:
        result = _daemon(ctx, "job.run", params | {"log": log_file}, fds=(fd,))
    finally:
        os.close(fd)
    click.echo(f"Started job {result['job']} (PID {result['pid']}), output in {log_file}")


def _open_log(path: str) -> int:
    import os

    from .errors import PermissionDenied, UsageError

    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    except PermissionError:
        raise PermissionDenied(f"cannot write the job's output to {path}: permission denied (use -o FILE)") from None
    except OSError as exc:
        raise UsageError(f"cannot write the job's output to {path}: {exc.strerror}") from None


def _wait_attached(ctx: Context, jid: str, pid: int) -> int:
    """Stay with an attached job until it ends; Ctrl-C is passed on to it as SIGINT."""
    while True:
        try:
            state = _daemon(ctx, "job.wait", {"jid": jid}, timeout=None)
            return state["exit_code"] if state.get("exit_code") is not None else 0
        except KeyboardInterrupt:
            _daemon(ctx, "job.kill", {"jid": jid, "signal": "INT"})


@cli.group("manage")
def manage_group() -> None:
    """Adopt a running process as a managed job."""


@manage_group.command("process")
@click.argument("pid", type=int)
@click.option("--jid", "-j", help="Job id (default: a readable random one).")
@pass_ctx
@handle_errors
def manage_process(ctx: Context, pid: int, jid: str | None) -> None:
    """Manage the running process PID as a job."""
    result = _daemon(ctx, "job.manage", {"pid": pid, "jid": jid})
    click.echo(f"Managing PID {pid} as job {result['job']}")


@cli.group("job")
def job_group() -> None:
    """List and manage jobs."""


def _job_rows(jobs: list[dict]) -> str:
    from .app.jobs import human_size

    rows = [[j["job"], j["type"], j["pid"] or "", j["status"], "yes" if j["gpu"] else "no", j["checkpoint"],
             human_size(j["size"]), j["log"]] for j in jobs]
    return format_table(["JOB", "TYPE", "PID", "STATUS", "GPU", "CHECKPOINT", "SIZE", "LOG"], rows)


@job_group.command("list")
@output_option
@pass_ctx
@handle_errors
def job_list(ctx: Context, output: str) -> None:
    """List jobs: JOB TYPE PID STATUS GPU CHECKPOINT SIZE LOG."""
    emit(_daemon(ctx, "job.list"), output, _job_rows)


def _checkpoint_rows(rows: list[dict]) -> str:
    from .app.jobs import human_size

    table = [[c["id"], c["time"][:19].replace("T", " "), human_size(c["size"]), c["path"]] for c in rows]
    return format_table(["ID", "TIME", "SIZE", "PATH"], table)


@job_group.command("checkpoints")
@click.argument("jid")
@output_option
@pass_ctx
@handle_errors
def job_checkpoints(ctx: Context, jid: str, output: str) -> None:
    """List a job's checkpoints, newest first: ID TIME SIZE PATH."""
    emit(_daemon(ctx, "job.checkpoints", {"jid": jid}), output, _checkpoint_rows)


@job_group.command("kill")
@click.argument("jid")
@click.option("--signal", "-s", "signame", default="KILL", show_default=True, help="Signal name or number.")
@pass_ctx
@handle_errors
def job_kill(ctx: Context, jid: str, signame: str) -> None:
    """Send a signal (default KILL) to a job's process."""
    result = _daemon(ctx, "job.kill", {"jid": jid, "signal": signame})
    click.echo(f"Sent {result['signal']} to job {jid} (PID {result['pid']})")


@job_group.command("delete")
@click.argument("jid")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@pass_ctx
@handle_errors
def job_delete(ctx: Context, jid: str, yes: bool) -> None:
    """Delete a job that is not running, and all its checkpoints."""
    from .errors import UsageError

    if not yes:
        count = len(_daemon(ctx, "job.checkpoints", {"jid": jid}))
        if not sys.stdin.isatty():
            raise UsageError(f"deleting job {jid} also deletes its {count} checkpoint(s): confirm with --yes")
        click.confirm(f"Delete job {jid} and its {count} checkpoint(s)?", abort=True)
    result = _daemon(ctx, "job.delete", {"jid": jid})
    click.echo(f"Deleted job {jid} and {len(result['checkpoints_deleted'])} checkpoint(s)")


@job_group.command("inspect")
@click.argument("jid")
@pass_ctx
@handle_errors
def job_inspect(ctx: Context, jid: str) -> None:
    """Show everything known about a job, as JSON."""
    emit(_daemon(ctx, "job.inspect", {"jid": jid}), "json")


cli.add_command(job_list, "ps")
cli.add_command(job_list, "jobs")
cli.add_command(job_checkpoints, "checkpoints")


@dump.command("job")
@click.argument("jid")
@click.option("--leave-running", is_flag=True, help="Keep the job running after the dump.")
@click.option("--streams", type=click.IntRange(0, 256), default=0,
              help="Chunks of each file uploading at once (default: config checkpoint.streams).")
@pass_ctx
@handle_errors
def dump_job(ctx: Context, jid: str, leave_running: bool, streams: int) -> None:
    """Checkpoint a job into the mount: mount.dir/jobs/<JID>/<new checkpoint>/."""
    params = {"jid": jid, "leave_running": leave_running, **({"streams": streams} if streams else {})}
    result = _daemon(ctx, "job.dump", params)
    click.echo(f"Dumped job {jid} to {result['path']}")


@restore.command("job")
@click.argument("jid")
@click.option("-p", "--path", help="Restore from this checkpoint directory or archive instead.")
@click.option("--checkpoint", "-c", "checkpoint_id", help="Checkpoint id (or unique prefix) of the job.")
@click.option("--lazy", is_flag=True, help="Restore with lazy pages (memory arrives on demand).")
@click.option("--streams", type=click.IntRange(0, 256), default=0,
              help="Parallel reads of the images ahead of CRIU (default: config checkpoint.streams).")
@pass_ctx
@handle_errors
def restore_job(ctx: Context, jid: str, path: str | None, checkpoint_id: str | None, lazy: bool,
                streams: int) -> None:
    """Restore a job from its latest checkpoint (or --checkpoint ID, or --path P) as a child of the daemon."""
    from .errors import UsageError

    if path and checkpoint_id:
        raise UsageError("--path and --checkpoint exclude each other")
    params = {"jid": jid, "path": _local_path(path), "checkpoint": checkpoint_id, "lazy": lazy,
              **({"streams": streams} if streams else {})}
    result = _daemon(ctx, "job.restore", params)
    click.echo(f"Restored job {jid} (PID {result['pid']}) from {result['path']}")


def main() -> None:
    """Entry point: click's own usage errors are also reported on one line."""
    try:
        code = cli.main(prog_name="cedana", standalone_mode=False)
    except click.UsageError as err:
        if type(err).__name__ == "NoArgsIsHelpError":  # a bare group: show its help, as click would
            click.echo(err.format_message())
            sys.exit(0)
        where = f" (see '{err.ctx.command_path} --help')" if err.ctx else ""
        fail(f"{err.format_message()}{where}", 2)
    except click.ClickException as err:
        fail(err.format_message(), err.exit_code)
    except click.Abort:
        fail("aborted", 1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
