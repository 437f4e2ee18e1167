"""train/checkpoint_target.py against Ray Train's own StorageContext: a local storage path gets the step's folder
inside the run, reported without a copy (and Ray Train counts it as its own); other storage a temporary folder
uploaded in the background."""
from pathlib import Path

import pyarrow.fs
from ray.train import Checkpoint, CheckpointUploadMode
from ray.train.v2._internal.execution.context import is_managed_checkpoint
from ray.train.v2._internal.execution.storage import StorageContext

from train.checkpoint_target import checkpoint_target


def test_a_local_storage_path_is_written_in_place_by_every_rank(tmp_path):
    storage = StorageContext(storage_path=str(tmp_path), experiment_dir_name="distill")
    folder, upload = checkpoint_target(storage, 8)
    assert upload == CheckpointUploadMode.NO_UPLOAD
    assert Path(folder) == tmp_path / "distill" / "checkpoint_step000008"
    assert checkpoint_target(storage, 8)[0] == folder  # another rank: the same folder
    assert checkpoint_target(storage, 16)[0] != folder
    Path(folder).mkdir(parents=True)
    assert is_managed_checkpoint(storage, Checkpoint.from_directory(folder))  # what NO_UPLOAD requires


def test_other_storage_gets_a_fresh_temporary_folder_uploaded_in_the_background(tmp_path):
    remote = pyarrow.fs.SubTreeFileSystem(str(tmp_path), pyarrow.fs.LocalFileSystem())  # not a plain local path
    storage = StorageContext(storage_path="bucket/runs", experiment_dir_name="distill", storage_filesystem=remote)
    folder, upload = checkpoint_target(storage, 8)
    assert upload == CheckpointUploadMode.ASYNC
    assert Path(folder).is_dir() and not Path(folder).is_relative_to(tmp_path)
    assert checkpoint_target(storage, 8)[0] != folder
