"""The daemon and its managed jobs: `daemon start|check`, `run`, `manage`, `job ...`, `dump job`,
`restore job` (over the daemon's socket, cedanafs.daemon.client).
"""

from __future__ import annotations

import sys

import click

from ..log import setup_logging
from .output import report, reports
from .base import (Context, IngestProgress, _criu_flags, _daemon, _local_path, cli, dump, emit, format_table,
                   handle_errors, manage_group, output_option, pass_ctx, restore, run_group)

@cli.group("daemon")
def daemon_group() -> None:
    """Run and check the cedana daemon (jobs, catalog and the mount)."""


@daemon_group.command("start")
@pass_ctx
@handle_errors
def daemon_start(ctx: Context) -> None:
    """Run the daemon in the foreground (systemd: contrib/cedana.service); SIGTERM stops it."""
    from ..daemon.service import start

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


@run_group.command("process", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--jid", "-j", help="Job id (default: a readable random one).")
@click.option("-o", "--out", "log_path", help="Output file (default <job.log_dir>/cedana-output-<JID>.log).")
@click.option("-a", "--attach", is_flag=True, help="Use this terminal's stdio and exit with the job's exit code.")
@click.option("--attachable", is_flag=True,
              help="Give the job a terminal kept by the daemon: `cedana attach` reaches it later.")
@output_option
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
@pass_ctx
@handle_errors
def run_process(ctx: Context, jid: str | None, log_path: str | None, attach: bool, attachable: bool, output: str,
                cmd: tuple[str, ...]) -> None:
    """Run CMD as a managed job: a new session, this cwd and environment."""
    import os

    from ..app.jobs import log_path as default_log, new_jid
    from ..catalog import check_job_name
    from ..errors import UsageError

    if attach and (log_path or attachable):
        raise UsageError(f"--attach and {'--out' if log_path else '--attachable'} exclude each other")
    _check_command(cmd)
    jid = check_job_name(jid) if jid else new_jid()
    params = {"cmd": list(cmd), "jid": jid, "cwd": os.getcwd(), "env": dict(os.environ), "attach": attach}
    if attach:
        result = _daemon(ctx, "job.run", params, fds=(0, 1, 2))
        sys.exit(_wait_attached(ctx, jid, result["pid"]))
    log_file = os.path.abspath(log_path or default_log(ctx.settings, jid))
    fd = _open_log(log_file)
    try:
        result = _daemon(ctx, "job.run", params | {"log": log_file, "attachable": attachable}, fds=(fd,))
    finally:
        os.close(fd)
    how = f"; attach with `cedana attach {result['pid']}`" if attachable else ""
    emit(result, output, lambda r: f"Started job {r['job']} (PID {r['pid']}), output in {log_file}{how}")


def _check_command(cmd: tuple[str, ...]) -> None:
    """An option before the command that `run process` does not know is a mistake, not the program."""
    from ..errors import UsageError

    after_dashes = "--" in sys.argv and sys.argv[sys.argv.index("--") + 1:][:1] == list(cmd[:1])
    if cmd and cmd[0].startswith("-") and not after_dashes:
        raise UsageError(f"no such option: {cmd[0]} (put the command after `--`: cedana run process -- CMD)")


def _open_log(path: str) -> int:
    import os

    from ..errors import PermissionDenied, UsageError

    try:  # the job's output is its owner's alone
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
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



@manage_group.command("process")
@click.argument("pid", type=int)
@click.option("--jid", "-j", help="Job id (default: a readable random one).")
@reports
@pass_ctx
@handle_errors
def manage_process(ctx: Context, pid: int, jid: str | None) -> None:
    """Manage the running process PID as a job."""
    result = _daemon(ctx, "job.manage", {"pid": pid, "jid": jid})
    report(result, f"Managing PID {pid} as job {result['job']}")


@cli.group("job")
def job_group() -> None:
    """List and manage jobs."""


def _job_rows(jobs: list[dict]) -> str:
    from ..app.jobs import human_size

    rows = [[j["job"], j["type"], j["pid"] or "", j["status"], "yes" if j["gpu"] else "no",
             f"{j['uploading']} (uploading)" if j.get("uploading") else j["checkpoint"],
             human_size(j["size"]), j["log"]] for j in jobs]
    return format_table(["JOB", "TYPE", "PID", "STATUS", "GPU", "CHECKPOINT", "SIZE", "LOG"], rows)


@job_group.command("list")
@click.option("--all", "-a", "all_hosts", is_flag=True, help="Include jobs of other hosts (status remote).")
@output_option
@pass_ctx
@handle_errors
def job_list(ctx: Context, all_hosts: bool, output: str) -> None:
    """List jobs: JOB TYPE PID STATUS GPU CHECKPOINT SIZE LOG."""
    jobs = [j for j in _daemon(ctx, "job.list") if all_hosts or j["status"] != "remote"]
    emit(jobs, output, _job_rows)


def _checkpoint_rows(rows: list[dict]) -> str:
    from ..app.jobs import human_size

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
@reports
@pass_ctx
@handle_errors
def job_kill(ctx: Context, jid: str, signame: str) -> None:
    """Send a signal (default KILL) to a job's process."""
    result = _daemon(ctx, "job.kill", {"jid": jid, "signal": signame})
    report(result, f"Sent {result['signal']} to job {jid} (PID {result['pid']})")


@job_group.command("delete")
@click.argument("jid")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@reports
@pass_ctx
@handle_errors
def job_delete(ctx: Context, jid: str, yes: bool) -> None:
    """Delete a job that is not running, and all its checkpoints."""
    from ..errors import UsageError

    if not yes:
        count = len(_daemon(ctx, "job.checkpoints", {"jid": jid}))
        if not sys.stdin.isatty():
            raise UsageError(f"deleting job {jid} also deletes its {count} checkpoint(s): confirm with --yes")
        click.confirm(f"Delete job {jid} and its {count} checkpoint(s)?", abort=True)
    result = _daemon(ctx, "job.delete", {"jid": jid})
    report(result, f"Deleted job {jid} and {len(result['checkpoints_deleted'])} checkpoint(s)")


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


def _criu_params(tcp_established: bool, file_locks: bool, external: tuple[str, ...], shell_job: bool | None,
                 link_remap: bool, criu_opts: str | None, **more: bool) -> dict:
    """The CRIU flags of a job command as the daemon's `criu` parameter: only those given."""
    from ..app.process import parse_criu_opts

    flags = {"tcp_established": tcp_established, "file_locks": file_locks, "external": list(external),
             "shell_job": shell_job, "link_remap": link_remap, "criu_opts": parse_criu_opts(criu_opts), **more}
    return {k: v for k, v in flags.items() if v not in (False, None, [], {})}


@dump.command("job")
@click.argument("jid")
@click.option("--leave-running", is_flag=True, help="Keep the job running after the dump.")
@click.option("--skip-in-flight", is_flag=True, help="Skip in-flight TCP connections.")
@click.option("--streams", type=click.IntRange(0, 256), default=0,
              help="Chunks of each file uploading at once (default: config checkpoint.streams).")
@reports
@_criu_flags
@pass_ctx
@handle_errors
def dump_job(ctx: Context, jid: str, leave_running: bool, skip_in_flight: bool, streams: int,
             **flags) -> None:
    """Checkpoint a job into the mount: mount.dir/jobs/<JID>/<new checkpoint>/."""
    import os

    params = {"jid": jid, "leave_running": leave_running, **({"streams": streams} if streams else {}),
              "criu": _criu_params(skip_in_flight=skip_in_flight, **flags)}
    with IngestProgress(os.path.join(ctx.settings.mount.dir, "jobs", jid)):
        result = _daemon(ctx, "job.dump", params)
    report(result, f"Dumped job {jid} to {result['path']}")
    if result.get("committed_after") is not None:
        IngestProgress.timing(result["captured_after"], result["committed_after"])


@restore.command("job")
@click.argument("jid")
@click.option("-p", "--path", help="Restore from this checkpoint directory or archive instead.")
@click.option("--checkpoint", "-c", "checkpoint_id", help="Checkpoint id (or unique prefix) of the job.")
@click.option("--lazy", is_flag=True, help="Restore with lazy pages (memory arrives on demand).")
@click.option("--streams", type=click.IntRange(0, 256), default=0,
              help="Parallel reads of the images ahead of CRIU (default: config checkpoint.streams).")
@reports
@click.option("--tcp-close", is_flag=True, help="Restore TCP connections closed.")
@click.option("--leave-stopped", is_flag=True, help="Leave the restored process stopped.")
@_criu_flags
@pass_ctx
@handle_errors
def restore_job(ctx: Context, jid: str, path: str | None, checkpoint_id: str | None, lazy: bool,
                streams: int, tcp_close: bool, leave_stopped: bool, **flags) -> None:
    """Restore a job from its latest checkpoint (or --checkpoint ID, or --path P) as a child of the daemon.

    The CRIU flags the dump was given (recorded in the checkpoint) apply again unless set here.
    """
    from ..errors import UsageError

    if path and checkpoint_id:
        raise UsageError("--path and --checkpoint exclude each other")
    params = {"jid": jid, "path": _local_path(path), "checkpoint": checkpoint_id, "lazy": lazy,
              **({"streams": streams} if streams else {}),
              "criu": _criu_params(tcp_close=tcp_close, leave_stopped=leave_stopped, **flags)}
    result = _daemon(ctx, "job.restore", params)
    report(result, f"Restored job {jid} (PID {result['pid']}) from {result['path']}")
