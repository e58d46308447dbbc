"""Segments: which rows belong together, from a carried column or a part of the file path."""

import numpy as np
import pyarrow as pa
import pytest

from batchml.errors import BatchmlError
from batchml.score.segments import Segmenting, groups, path_regex, segmenting
from batchml.stats import MISSING_SEGMENT, OTHER_SEGMENT


@pytest.mark.parametrize("pattern, path, value", [
    ("{camera}/**", "cam-07/cat/0001.jpg", "cam-07"),
    ("{camera}/**", "cam-07/0001.jpg", "cam-07"),
    ("**/{site}/*", "2026/north/x.png", "north"),
    ("**/{site}/*", "north/x.png", "north"),
    ("night-*/{camera}/**", "night-3/c2/cat/a.jpg", "c2"),
])
def test_a_path_pattern_names_one_part_of_the_path(pattern, path, value):
    assert path_regex(pattern).fullmatch(path).group(1) == value


def test_files_the_pattern_misses_have_no_segment():
    table = pa.table({"image_id": ["cam-1/a.jpg", "loose.jpg"]})
    assert Segmenting(path_pattern="{camera}/*").values(table, "part-0") == ["cam-1", MISSING_SEGMENT]


@pytest.mark.parametrize("pattern", ["cameras/**", "{a}/{b}/*"])
def test_a_pattern_must_capture_exactly_one_part(pattern):
    with pytest.raises(BatchmlError, match="one part of the path"):
        segmenting(None, pattern, images=True)


def test_path_segments_need_files_and_one_way_of_segmenting():
    with pytest.raises(BatchmlError, match="--segment-by COLUMN"):
        segmenting(None, "{camera}/**", images=False)
    with pytest.raises(BatchmlError, match="not both"):
        segmenting("camera", "{camera}/**", images=True)
    assert segmenting(None, None, images=True) is None
    assert segmenting(None, "{camera}/**", images=True).name == "camera"


def test_a_carried_column_gives_each_row_its_value_and_a_missing_column_is_named():
    table = pa.table({"image_id": ["a", "b", "c"], "image": [b""] * 3, "site": [3, None, 3]})
    assert Segmenting(column="site").values(table, "part-0") == ["3", MISSING_SEGMENT, "3"]
    with pytest.raises(BatchmlError, match=r"no column 'camera'.*site"):
        Segmenting(column="camera").values(table, "part-00002.parquet")


def test_groups_keep_the_top_values_apart_and_sum_the_rest_as_other():
    values = ["a"] * 3 + ["b"] * 2 + ["c", "d"]
    out = groups(values, good=[0, 1, 2, 3, 5, 6], bad=[4], top=2)
    assert sorted(out) == [OTHER_SEGMENT, "a", "b"]
    assert out["a"][0].tolist() == [0, 1, 2] and out["a"][1] == 0
    assert out["b"][0].tolist() == [3] and out["b"][1] == 1  # row 4 failed to decode
    assert out[OTHER_SEGMENT][0].tolist() == [4, 5]  # rows 5 and 6, positions 4 and 5 among the good
    assert sum(len(rows) for rows, _ in out.values()) == 6 and np.all([isinstance(k, str) for k in out])
