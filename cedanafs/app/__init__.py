"""Use cases: each module wires the lower layers for one family of commands."""
