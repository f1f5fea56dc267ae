"""Cedana's short verbs and the command's own tooling: `exec` (alias of `run process`), `kill`,
`delete`, `features`, `completion bash|zsh|fish`, `daemon stop`.
"""

from __future__ import annotations

import click

from .base import Context, _daemon, cli, emit, format_table, handle_errors, output_option, pass_ctx
from .jobs import daemon_group, job_delete, run_process
from .output import report, reports

cli.add_command(run_process, "exec")

SHELLS = ("bash", "zsh", "fish")


def _all_jids(ctx: Context) -> list[str]:
    return [j["job"] for j in _daemon(ctx, "job.list") if j["status"] in ("running", "sleep")]


@cli.command("kill")
@click.argument("jids", nargs=-1)
@click.option("--all", "-a", "all_jobs", is_flag=True, help="Kill every running job.")
@click.option("--signal", "-s", "signame", default="KILL", show_default=True, help="Signal name or number.")
@output_option
@pass_ctx
@handle_errors
def kill_cmd(ctx: Context, jids: tuple[str, ...], all_jobs: bool, signame: str, output: str) -> None:
    """Send a signal (default KILL) to jobs JID... (alias of `job kill`)."""
    from ..errors import UsageError

    targets = _all_jids(ctx) if all_jobs else list(jids)
    if not targets and not all_jobs:
        raise UsageError("name at least one job (JID...) or --all")
    results = [_daemon(ctx, "job.kill", {"jid": jid, "signal": signame}) for jid in targets]
    emit(results, output, lambda rs: "\n".join(f"Sent {r['signal']} to job {r['job']} (PID {r['pid']})"
                                                for r in rs) or "no running jobs")


@cli.command("delete")
@click.argument("jids", nargs=-1)
@click.option("--all", "-a", "all_jobs", is_flag=True, help="Delete every job that is not running.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@pass_ctx
@handle_errors
def delete_cmd(ctx: Context, jids: tuple[str, ...], all_jobs: bool, yes: bool) -> None:
    """Delete jobs JID... that are not running, with their checkpoints and logs (alias of `job delete`)."""
    from ..errors import UsageError

    alive = ("running", "sleep", "zombie")
    targets = ([j["job"] for j in _daemon(ctx, "job.list") if j["status"] not in alive and j["uid"] is not None]
               if all_jobs else list(jids))
    if not targets and not all_jobs:
        raise UsageError("name at least one job (JID...) or --all")
    for jid in targets:
        click.get_current_context().invoke(job_delete, jid=jid, yes=yes)


@cli.command("features")
@output_option
@pass_ctx
@handle_errors
def features_cmd(ctx: Context, output: str) -> None:
    """What this install supports: CRIU, lazy pages, the mount, S3, GCS, runc, containerd, GPU."""
    from ..app.features import features

    items = features(ctx.settings)
    rows = [[f.name, "yes" if f.available else "no", f.detail] for f in items]
    emit([f.to_dict() for f in items], output, lambda _: format_table(["FEATURE", "AVAILABLE", "DETAIL"], rows))


@cli.command("completion")
@click.argument("shell", type=click.Choice(SHELLS))
def completion_cmd(shell: str) -> None:
    """Print the shell completion script for SHELL.

    \b
    bash: eval "$(cedana completion bash)"   (or save it in /etc/bash_completion.d/cedana)
    zsh:  eval "$(cedana completion zsh)"
    fish: cedana completion fish > ~/.config/fish/completions/cedana.fish
    """
    from click.shell_completion import get_completion_class

    comp = get_completion_class(shell)(cli, {}, "cedana", "_CEDANA_COMPLETE")
    click.echo(comp.source())


@daemon_group.command("stop")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait for it to stop.")
@reports
@pass_ctx
@handle_errors
def daemon_stop(ctx: Context, timeout: float) -> None:
    """Stop the daemon (SIGTERM): it unmounts its mount and leaves every job running."""
    import os
    import signal
    import time

    from ..daemon import client
    from ..errors import CedanaError

    pid = int(_daemon(ctx, "daemon.health", timeout=30)["pid"])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while client.is_listening(ctx.settings.address) or _alive(pid):
        if time.monotonic() > deadline:
            raise CedanaError(f"the daemon (pid {pid}) did not stop within {timeout:.0f}s")
        time.sleep(0.1)
    report({"pid": pid, "stopped": True}, f"Stopped the cedana daemon (pid {pid})")


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
