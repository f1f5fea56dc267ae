"""The cedana daemon (layer 4): a trio service that owns the job supervisor, the catalog and the mount.

`service` runs it (`cedana daemon start`), `server` is its control socket, `protocol` the wire
format shared with `client`, the synchronous client the CLI uses. docs/daemon.md describes the
protocol.
"""
