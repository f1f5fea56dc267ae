#!/usr/bin/env python3
"""A parent and a child joined by a pipe, with an open file at a known offset.

The child sends increasing numbers down the pipe; the parent appends what it receives to OUT.
On SIGUSR1 the parent writes STATE (JSON): both pids, the data file's offset, the last value.
"""

import json
import os
import signal
import sys
import time

out_path, state_path, data_path, offset = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

data = open(data_path, "rb")
data.seek(offset)
rfd, wfd = os.pipe()
child = os.fork()
if child == 0:
    os.close(rfd)
    n = 0
    while True:
        n += 1
        os.write(wfd, f"{n}\n".encode())
        time.sleep(0.05)

os.close(wfd)
last = 0
wanted = []
signal.signal(signal.SIGUSR1, lambda *_: wanted.append(1))
with open(out_path, "a") as out, os.fdopen(rfd, "rb", buffering=0) as pipe:
    buf = b""
    while True:
        buf += pipe.read(64)
        *lines, buf = buf.split(b"\n")
        for line in lines:
            last = int(line)
            out.write(f"{last}\n")
            out.flush()
        if wanted:
            wanted.clear()
            state = {"parent": os.getpid(), "child": child, "offset": data.tell(), "last": last}
            with open(state_path + ".tmp", "w") as f:
                json.dump(state, f)
            os.replace(state_path + ".tmp", state_path)
