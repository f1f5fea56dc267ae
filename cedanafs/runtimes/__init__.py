"""Container runtimes over CRIU: runc (runc.py) and containerd (containerd.py).

Each module finds a container and what its checkpoint needs, checkpoints it into an images
directory and brings it back; the runtime drives CRIU itself, with the CRIU the criu layer finds.
"""
