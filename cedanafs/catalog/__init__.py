"""The catalog (layer 1): jobs, checkpoints and their manifests, the SQLite index of them, and the
mount's tree with the checkpoint lifecycle (pending -> sealed -> deleted).

It stores manifests through any object store with get/put/create/list/delete/exists, reaches
the bytes of files through the structural `tree.Data` protocol, and never imports the streamer,
CRIU or FUSE layers.
"""

from .catalog import Catalog, CheckpointInfo, ChunkUsage, JobInfo, RefreshResult, manifest_key, parse_manifest_key
from .ids import (check_checkpoint_name, check_job_name, is_valid_checkpoint_name, is_valid_job_name,
                  new_checkpoint_id)
from .manifest import FORMAT_VERSION, FileEntry, Manifest, decode_manifest, encode_manifest, make_manifest
from .nodes import ROOT_INODE, Attr, Status, derive_inode
from .tree import Tree

__all__ = [
    "Catalog", "CheckpointInfo", "ChunkUsage", "JobInfo", "RefreshResult", "manifest_key", "parse_manifest_key",
    "check_checkpoint_name", "check_job_name", "is_valid_checkpoint_name", "is_valid_job_name",
    "new_checkpoint_id", "FORMAT_VERSION", "FileEntry", "Manifest", "decode_manifest", "encode_manifest",
    "make_manifest", "ROOT_INODE", "Attr", "Status", "derive_inode", "Tree",
]
