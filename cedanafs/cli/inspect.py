"""`checkpoint inspect --type ps|fd|mem|rss|sk`: CRIU's images decoded (cedanafs.app.decode), as
tables or JSON, from a directory, an archive (local or remote), the mount or the store.
"""

from __future__ import annotations

from typing import Callable

from ..config import format_size
from .base import Context, emit, format_table


def _ps(rows: list[dict]) -> str:
    return format_table(["PID", "PPID", "PGID", "SID", "THREADS", "STATE", "COMM"],
                        [[r["pid"], r["ppid"], r["pgid"], r["sid"], len(r["threads"]), r["state"], r["comm"]]
                         for r in rows])


def _fd(rows: list[dict]) -> str:
    table = []
    for r in rows:
        table += [[r["pid"], f["fd"], f["type"], f["path"], f.get("pos", "")] for f in r["fds"]]
        table += [[r["pid"], "cwd", "", r["cwd"], ""], [r["pid"], "root", "", r["root"], ""]]
    return format_table(["PID", "FD", "TYPE", "PATH", "POS"], table)


def _mem(rows: list[dict]) -> str:
    table = [[r["pid"], f"{v['start']}-{v['end']}", v["prot"], v["backing"]] for r in rows for v in r["vmas"]]
    return format_table(["PID", "RANGE", "PROT", "BACKING"], table)


def _rss(rows: list[dict]) -> str:
    table = [[r["pid"], run["vaddr"], run["pages"], run["backing"]] for r in rows for run in r["runs"]]
    totals = "\n".join(f"PID {r['pid']}: {r['pages']} pages resident ({format_size(r['bytes'])})" for r in rows)
    return format_table(["PID", "VADDR", "PAGES", "BACKING"], table) + "\n\n" + totals


def _sk(rows: list[dict]) -> str:
    return format_table(["ID", "KIND", "FAMILY", "TYPE", "PROTO", "STATE", "LOCAL", "REMOTE"],
                        [[r["id"], r["kind"], r["family"], r["type"], r["proto"], r["state"], r["local"],
                          r["remote"]] for r in rows])


TABLES: dict[str, Callable[[list[dict]], str]] = {"ps": _ps, "fd": _fd, "mem": _mem, "rss": _rss, "sk": _sk}


def inspect_images(ctx: Context, ref: str, kind: str, store_url: str | None, output: str) -> None:
    from ..app.decode import decode, images_of

    with images_of(ctx.settings, ref, store_url) as path:
        records = decode(path, kind)
    emit(records, output, TABLES[kind])
