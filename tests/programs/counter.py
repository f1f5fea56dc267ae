#!/usr/bin/env python3
"""Counts up, appending each value to FILE and printing it; exits with --exit-code at --limit.

The value lives only in memory, so after a restore the next line proves the process carried
on from where it was instead of starting over.
"""

import argparse
import time

parser = argparse.ArgumentParser()
parser.add_argument("file")
parser.add_argument("--limit", type=int, default=0)
parser.add_argument("--interval", type=float, default=0.05)
parser.add_argument("--exit-code", type=int, default=0)
parser.add_argument("--stdout", action="store_true", help="also print each value")
args = parser.parse_args()

value = 0
with open(args.file, "a") as out:
    while True:
        value += 1
        out.write(f"{value}\n")
        out.flush()
        if args.stdout:
            print(value, flush=True)
        if args.limit and value >= args.limit:
            raise SystemExit(args.exit_code)
        time.sleep(args.interval)
