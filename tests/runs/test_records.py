"""record.json has one owner (pipeline._records): written and read back through one schema."""
import json

import pytest
from helpers import fake_codes

from pipeline._records import RECORD_VERSION, load_record, write_record
from pipeline.runs import train


def test_a_record_is_checked_as_it_is_written_and_read_back_the_same(tmp_path):
    run = train(fake_codes(tmp_path / "x.h5")[0], head="prototype", runs_dir=tmp_path / "runs")
    record = load_record(run.path)
    assert record["record_version"] == RECORD_VERSION and record["metrics"]["accuracy"] > 0.5
    write_record(tmp_path, record)
    assert load_record(tmp_path) == record  # what is written reads back as it was
    broken = dict(record, n_test=len(record["test_paths"]) - 1)  # a field its readers refuse
    with pytest.raises(ValueError, match="test_paths lists"):
        write_record(tmp_path / "runs", broken)
    del record["metrics"]["n"]
    with pytest.raises(ValueError, match="metrics.n"):
        write_record(tmp_path / "runs", record)
    assert json.loads((tmp_path / "record.json").read_text())["metrics"]["n"] > 0  # (nothing written when refused)
