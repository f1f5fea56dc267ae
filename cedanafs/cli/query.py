"""`query process`, `freeze`/`unfreeze` `process <PID>` and `job <JID>` (cedanafs.app.query, app.freeze),
done by this command itself: a job's PID comes from the daemon.
"""

from __future__ import annotations

import click

from ..config import format_size
from .base import Context, _daemon, cli, emit, format_table, handle_errors, output_option, pass_ctx


@cli.group("query")
def query_group() -> None:
    """What a checkpoint would take: processes, files, sockets, flags, size."""


def _query_text(results: list, inspect: bool) -> str:
    rows = [[p.pid, p.ppid, p.status, len(p.files), len(p.sockets), format_size(p.anon_bytes),
             " ".join(p.cmdline)[:60]] for r in results for p in r.processes]
    text = format_table(["PID", "PPID", "STATE", "FILES", "SOCKETS", "MEMORY", "COMMAND"], rows)
    for r in results:
        text += (f"\n\nPID {r.pid}: predicted size {format_size(r.predicted_size)};"
                 f" needs {' '.join(r.flags) if r.flags else 'no extra flags'}")
    if inspect and results:
        first = results[0].processes[0]
        text += "\n\n" + format_table(["FD", "PATH", "POS"], [[f["fd"], f["path"], f["pos"]] for f in first.files])
        if first.sockets:
            text += "\n\n" + format_table(["FD", "TYPE", "LOCAL", "REMOTE", "STATUS"],
                                          [[s["fd"], s["type"], s["local"], s["remote"], s["status"]]
                                           for s in first.sockets])
    return text


@query_group.command("process")
@click.argument("pids", type=int, nargs=-1, required=True)
@click.option("--tree", "-t", is_flag=True, help="Include the whole process tree of each PID.")
@click.option("--inspect", "-i", is_flag=True, help="Show the files and sockets of the first result.")
@output_option
@handle_errors
def query_process_cmd(pids: tuple[int, ...], tree: bool, inspect: bool, output: str) -> None:
    """Query processes PID...: what a dump would take and which flags it needs."""
    from ..app.query import query_process

    results = [query_process(pid, tree=tree) for pid in pids]
    emit([r.to_dict() for r in results], output, lambda _: _query_text(results, inspect))


@cli.group("freeze")
def freeze_group() -> None:
    """Stop a process tree or a job (cgroup freezer where the tree has its own cgroup, else SIGSTOP)."""


@cli.group("unfreeze")
def unfreeze_group() -> None:
    """Let a frozen process tree or job run again."""


def _freeze(pid: int, frozen: bool, output: str, what: str) -> None:
    from ..app import freeze as app_freeze

    result = app_freeze.freeze(pid) if frozen else app_freeze.unfreeze(pid)
    verb = "Froze" if frozen else "Unfroze"
    emit(result.to_dict(), output,
         lambda r: f"{verb} {what} ({len(r['pids'])} process(es), by {r['method']})")


def _job_pid(ctx: Context, jid: str) -> int:
    from ..errors import UsageError

    info = _daemon(ctx, "job.inspect", {"jid": jid}, timeout=30)
    if info["status"] not in ("running", "sleep"):
        raise UsageError(f"job {jid} is not running ({info['status']})")
    return int(info["pid"])


@freeze_group.command("process")
@click.argument("pid", type=int)
@output_option
@handle_errors
def freeze_process(pid: int, output: str) -> None:
    """Freeze process PID and its children."""
    _freeze(pid, True, output, f"PID {pid}")


@unfreeze_group.command("process")
@click.argument("pid", type=int)
@output_option
@handle_errors
def unfreeze_process(pid: int, output: str) -> None:
    """Unfreeze process PID and its children."""
    _freeze(pid, False, output, f"PID {pid}")


@freeze_group.command("job")
@click.argument("jid")
@output_option
@pass_ctx
@handle_errors
def freeze_job(ctx: Context, jid: str, output: str) -> None:
    """Freeze every process of job JID."""
    _freeze(_job_pid(ctx, jid), True, output, f"job {jid}")


@unfreeze_group.command("job")
@click.argument("jid")
@output_option
@pass_ctx
@handle_errors
def unfreeze_job(ctx: Context, jid: str, output: str) -> None:
    """Unfreeze every process of job JID."""
    _freeze(_job_pid(ctx, jid), False, output, f"job {jid}")
