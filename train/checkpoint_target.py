"""Where a step's DeepSpeed checkpoint is written, and whether Ray Train then copies it into the run's storage.

When the run's storage is a local path (one machine, or a mount every node shares, as Ray Train requires of
a local path on a cluster), every rank writes its shard straight into a checkpoint folder of the run and
reports it with NO_UPLOAD: Ray Train registers it (and deletes it past CheckpointConfig.num_to_keep) without
copying it. Copying it from a temporary folder wrote ~1 GB more for the embedded student and doubled the next
step's forward and backward (on the 2-core demo machine the run as a whole took as long either way). Other storage (s3://, gs://) gets a temporary
folder that Ray Train uploads in the background (ASYNC).
"""
import tempfile

from pyarrow.fs import LocalFileSystem
from ray.train import CheckpointUploadMode


def checkpoint_target(storage, step: int) -> tuple[str, CheckpointUploadMode]:
    """(folder to write, upload mode) for step `step`; `storage` is ray.train.get_context().get_storage().
    The folder's name depends on the step alone, so every rank writes into the same one."""
    if isinstance(storage.storage_filesystem, LocalFileSystem):
        return storage.build_checkpoint_path_from_name(f"checkpoint_step{step:06d}"), CheckpointUploadMode.NO_UPLOAD
    return tempfile.mkdtemp(prefix="studyhall-ckpt-"), CheckpointUploadMode.ASYNC
