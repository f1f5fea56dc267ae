"""Logging setup shared by the CLI, the mount and the daemon; modules log via logging.getLogger(__name__)."""

import logging
import os

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str | None = None, logfile: str | None = None) -> None:
    """Configure the root logger once; level from the argument, else CEDANA_LOG_LEVEL, else WARNING."""
    name = (level or os.environ.get("CEDANA_LOG_LEVEL") or "WARNING").upper()
    handler: logging.Handler = logging.FileHandler(logfile) if logfile else logging.StreamHandler()
    handler.setFormatter(logging.Formatter(_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, name, logging.WARNING))
