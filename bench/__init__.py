"""The cedanafs benchmark harness (`make bench`, `make bench-smoke`); entry point: bench/run.py.

It drives `criu`, `tar`, compressors and the `cedana` command as programs, never cedanafs's
internals, so it measures what a user pays and keeps working while the internals change.
"""
