"""A restore that keeps the caller's terminal: `criu restore --shell-job` on the command line.

pycriu closes fds 0-2 before it execs `criu swrk`, so over RPC CRIU never sees the caller's
terminal and an interactive shell cannot be given one. The criu command, run with our stdio,
restores a shell job onto the terminal it was started from; `--restore-sibling` makes the
restored tree our child, so the caller can wait for it and pass on its exit code.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .lazy import restore_args
from .rpc import CriuFailed, RestoreOptions, log_errors

log = logging.getLogger(__name__)


def restore_in_terminal(binary: str, o: RestoreOptions) -> int:
    """Restore o.images_dir with our stdin/stdout/stderr as the terminal; returns the root pid (our child)."""
    work = o.work_dir or o.images_dir
    pid_dir = tempfile.mkdtemp(prefix="cedana-restore-pid-")
    pid_file = os.path.join(pid_dir, "pid")
    try:
        cmd = [binary, "restore", "-D", o.images_dir, "-W", work, "-o", o.log_file, f"-v{o.log_level}", "-d",
               "--pidfile", pid_file, *restore_args(o)]
        log.info("criu restore in this terminal: %s", " ".join(cmd))
        code = subprocess.run(cmd, pass_fds=tuple(m.fd for m in o.inherit)).returncode
        log_path = os.path.join(work, o.log_file)
        if code != 0:
            raise CriuFailed("restore", log_errors(log_path) or f"criu exited with {code}", log_path)
        return int(Path(pid_file).read_text().strip())
    finally:
        shutil.rmtree(pid_dir, ignore_errors=True)
