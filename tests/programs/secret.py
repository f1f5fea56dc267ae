#!/usr/bin/env python3
"""Holds a secret in memory and counts: each line of FILE is `<count> <ok|bad>`.

The secret is a marker (built at run time, so it is in memory only, not in argv or this file)
repeated between random bytes, several MiB of it. Each tick rechecks its digest: after a restore
`ok` lines with higher counts prove the process carried on with its memory intact.
"""

import argparse
import hashlib
import os
import time

parser = argparse.ArgumentParser()
parser.add_argument("file")
parser.add_argument("--marker-parts", default="SECRET,MARKER,7f3a9c", help="joined with '-' at run time")
parser.add_argument("--copies", type=int, default=20000)
parser.add_argument("--interval", type=float, default=0.1)
args = parser.parse_args()

marker = "-".join(args.marker_parts.split(",")).encode()
secret = bytearray()
for _ in range(args.copies):
    secret += marker + os.urandom(200)
digest = hashlib.sha256(secret).hexdigest()

value = 0
with open(args.file, "a") as out:
    while True:
        value += 1
        state = "ok" if hashlib.sha256(secret).hexdigest() == digest else "bad"
        out.write(f"{value} {state}\n")
        out.flush()
        time.sleep(args.interval)
