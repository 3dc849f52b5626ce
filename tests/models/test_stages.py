"""The files between stages: an array and the table of its rows stay a matched pair."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models import stages


def test_an_array_written_without_its_rows_is_detected(tmp_path: Path) -> None:
    """A crash between the two renames leaves a new array beside the old rows: same length, wrong images."""
    npy, rows = tmp_path / "simclr.npy", tmp_path / "simclr.uids.parquet"
    first = np.arange(12, dtype=np.float32).reshape(3, 4)
    stages._save_rows(first, npy, pd.DataFrame({"sop_instance_uid": ["1.1", "1.2", "1.3"]}), rows)
    array, table = stages._load_rows(npy, rows)
    np.testing.assert_array_equal(array, first)
    assert table.columns.tolist() == ["sop_instance_uid"]

    stages._save_array(first[::-1].copy(), npy)  # the next run's array landed, its rows did not
    with pytest.raises(ValueError, match="different runs"):
        stages._load_rows(npy, rows)


def test_reuse_of_embeddings_falls_back_to_embedding_everything_on_a_torn_pair(tmp_path: Path) -> None:
    embed_dir = tmp_path / stages.EMBED_DIR
    old = np.ones((2, 4), np.float32)
    stages._save_rows(old, embed_dir / "byol.npy",
                      pd.DataFrame({"sop_instance_uid": ["1.1", "1.2"], "cache_key": ["a", "b"], "model_key": "m"}),
                      embed_dir / "byol.uids.parquet")
    kept = stages._previous_rows(tmp_path, "byol", "m", ["1.2", "1.3"], ["b", "c"])
    np.testing.assert_array_equal(kept[0], old[1])
    assert np.isnan(kept[1]).all()
    stages._save_array(np.zeros((2, 4), np.float32), embed_dir / "byol.npy")
    assert stages._previous_rows(tmp_path, "byol", "m", ["1.2", "1.3"], ["b", "c"]) is None
