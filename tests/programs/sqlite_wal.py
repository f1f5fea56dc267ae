#!/usr/bin/env python3
"""A sqlite writer in WAL mode: `sqlite_wal.py DB`. Inserts 1, 2, 3, ... one row per transaction.

The next value lives in memory only, and the connection (with its POSIX locks on the database
and its shared-memory index, which CRIU dumps only with --file-locks) stays open throughout, so
rows that go on from where they were after a restore prove the writer survived whole.
"""

import sqlite3
import sys
import time

db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA journal_mode = WAL")
db.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER PRIMARY KEY)")
value = 0
while True:
    value += 1
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO t (n) VALUES (?)", (value,))
    db.execute("COMMIT")
    time.sleep(0.05)
