"""The mount (layer 2): checkpoints as a filesystem, a protocol adapter and nothing more.

`operations` is the pyfuse3 adapter over cedanafs.catalog.Tree (names, attributes, errno at one
boundary), `xattrs` the `user.cedana.*` control table, `mount` the mount loop. Only this package
imports pyfuse3; importing the package itself does not, so callers that only need the constants
stay light.
"""

FSNAME = "cedanafs"
# /proc/self/mountinfo shows the type as fuse.<subtype>; other tools detect the mount by it.
FSTYPE = "fuse." + FSNAME
