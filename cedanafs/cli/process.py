"""`cedana check`, `dump process` and `restore process` (cedanafs.app.process), in this command or
through the daemon when one listens.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from ..config import COMPRESSIONS
from .base import (Context, IngestProgress, _criu_flags, _daemon, _daemon_listening, _local_path, cli, dump, emit, format_table,
                   handle_errors, output_option, pass_ctx, restore)
from .output import report, reports

@cli.command()
@click.option("--full", is_flag=True, help="Also run CRIU's extended checks.")
@output_option
@pass_ctx
@handle_errors
def check(ctx: Context, full: bool, output: str) -> None:
    """Check that this machine can checkpoint and restore."""
    from ..app.check import ready, run_checks

    items = run_checks(ctx.settings, full=full)
    rows = [[i.name, "ok" if i.ok else ("MISSING" if i.required else "warning"), i.detail, "" if i.ok else i.fix]
            for i in items]
    emit([i.__dict__ for i in items], output, lambda _: format_table(["CHECK", "STATUS", "DETAIL", "NEXT STEP"], rows))
    if not ready(items):
        sys.exit(8)



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
@reports
@pass_ctx
@handle_errors
def dump_process_cmd(ctx: Context, pid: int, directory: str | None, name: str | None, compression: str | None,
                     leave_running: bool | None, skip_in_flight: bool, streams: int, no_server: bool,
                     result_file: str | None, tcp_established: bool, file_locks: bool, external: tuple[str, ...],
                     shell_job: bool | None, link_remap: bool, criu_opts: str | None) -> None:
    """Checkpoint process PID (and its children)."""
    from ..app.process import DumpRequest, dump_process, parse_criu_opts

    req = DumpRequest(
        pid=pid, dir=directory, name=name, compression=compression, leave_running=leave_running,
        tcp_established=tcp_established, skip_in_flight=skip_in_flight, file_locks=file_locks,
        external=external, shell_job=shell_job, link_remap=link_remap, criu_opts=parse_criu_opts(criu_opts),
        streams=streams,
    )
    with IngestProgress(directory):
        result = None if no_server else _dump_via_daemon(ctx, req)
        result = result or dump_process(ctx.settings, req)
    if result_file:
        with open(result_file, "w") as f:
            json.dump(result.to_dict(), f, indent=2)
    report(result.to_dict(), f"Dumped PID {pid} to {result.path}")
    if result.committed_after is not None:
        IngestProgress.timing(result.captured_after, result.committed_after)



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
@reports
@pass_ctx
@handle_errors
def restore_process_cmd(ctx: Context, path: str, pid_file: str | None, no_server: bool, attach: bool,
                        tcp_close: bool, leave_stopped: bool, lazy: bool, streams: int, tcp_established: bool,
                        file_locks: bool, external: tuple[str, ...], shell_job: bool | None, link_remap: bool,
                        criu_opts: str | None) -> None:
    """Restore a process from the checkpoint at --path."""
    from ..app.process import RestoreRequest, parse_criu_opts, restore_process

    req = RestoreRequest(
        path=path, no_server=no_server or attach, lazy=lazy, pid_file=pid_file, tcp_established=tcp_established,
        tcp_close=tcp_close, leave_stopped=leave_stopped, file_locks=file_locks, external=external,
        shell_job=shell_job, link_remap=link_remap, criu_opts=parse_criu_opts(criu_opts), streams=streams,
    )
    result = None if req.no_server else _restore_via_daemon(ctx, req)
    result = result or restore_process(ctx.settings, req)
    if result.exit_code is not None:
        sys.exit(result.exit_code)
    report({"pid": result.pid, "path": path}, f"Restored PID {result.pid}")



def _dump_via_daemon(ctx: Context, req: Any) -> Any:
    """`dump process` through the daemon when one listens; None to do it in this process."""
    import dataclasses

    from ..app.process import DumpResult

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

    from ..app.process import RestoreResult

    if not _daemon_listening(ctx):
        return None
    sent = dataclasses.replace(req, path=_local_path(req.path), pid_file=None)
    result = RestoreResult(pid=int(_daemon(ctx, "process.restore", dataclasses.asdict(sent))["pid"]))
    if req.pid_file:
        with open(req.pid_file, "w") as f:
            f.write(f"{result.pid}\n")
    return result
