"""data/prepare.py: the LLaRA conversion against the S-DPO authors' published file, and bad input."""

import json
import os

import pandas as pd
import pytest

from data.prepare import prepare, sample_candidates
from trainer.errors import InputError


def test_conversion_reproduces_the_golden_validation_file(shared_data_dir, tmp_path):
    counts = prepare(source=os.path.join(shared_data_dir, "lastfm"), output_dir=str(tmp_path))
    assert counts == {"train": 47872, "valid": 2767, "test": 2495}
    with open(tmp_path / "valid.json", encoding="utf-8") as handle:
        converted = json.load(handle)
    with open(os.path.join(shared_data_dir, "golden", "lastfm-val.json"), encoding="utf-8") as handle:
        golden = json.load(handle)
    assert len(converted) == len(golden) == 2767
    mismatches = [index for index, (ours, theirs) in enumerate(zip(converted, golden)) if ours != theirs]
    assert mismatches == []


def test_candidates_hold_the_true_item_and_no_history_item():
    candidates = sample_candidates(history_ids=[1, 2, 3], next_id=7, item_ids=list(range(50)), num_negatives=19)
    assert len(candidates) == len(set(candidates)) == 20
    assert 7 in candidates and not {1, 2, 3} & set(candidates)
    assert candidates == sample_candidates([1, 2, 3], 7, list(range(50)), 19)


def write_llara(folder, rows, titles=("A", "B", "C", "D", "E")):
    folder.mkdir(exist_ok=True)
    (folder / "id2name.txt").write_text("".join(f"{i}::{t}\n" for i, t in enumerate(titles)))
    for name in ("train_data.df", "val_data.df", "test_data.df"):
        pd.DataFrame(rows, columns=["seq", "len_seq", "next"]).to_pickle(folder / name)


def test_small_conversion_and_padding(tmp_path):
    pad = 5
    write_llara(tmp_path / "src", [([0, 1, 2, pad], 3, 3), ([0, pad, pad, pad], 1, 1)])
    prepare(str(tmp_path / "src"), str(tmp_path / "out"), num_negatives=1)
    records = json.loads((tmp_path / "out" / "train.json").read_text())
    assert len(records) == 1  # the len_seq=1 row is dropped
    assert records[0]["historyList"] == "A::B::C" and records[0]["trueSelection"] == "D"
    assert sorted(records[0]["itemList"]) == ["D", "E"]  # E is the only item left to sample


def test_unknown_item_id_is_reported_and_nothing_is_written(tmp_path):
    write_llara(tmp_path / "src", [([0, 1, 2, 5], 3, 42)])
    with pytest.raises(InputError, match=r"train_data.df: row 0: field 'next': unknown item id 42"):
        prepare(str(tmp_path / "src"), str(tmp_path / "out"), num_negatives=1)
    assert not (tmp_path / "out").exists()


def test_bad_title_file_names_the_line(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "id2name.txt").write_text("0::A\nnot a pair\n")
    with pytest.raises(InputError, match=r"id2name.txt: line 2"):
        prepare(str(tmp_path / "src"), str(tmp_path / "out"))
