"""The mount (layer 2): checkpoints as a filesystem.

`vfs` is the tree (no FUSE in it), `operations` the pyfuse3 adapter over it, `mount` the
lifecycle. Only this package imports pyfuse3; importing the package itself does not, so callers
that only need the tree or the constants stay light.
"""

FSNAME = "cedanafs"
FSTYPE = "fuse." + FSNAME
