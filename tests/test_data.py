"""trainer/data.py: reading records, their validation errors naming file, record and field, and sampling."""

import json

import pytest
from conftest import make_record, write_records

from trainer.data import load_records, parse_record, select_indices
from trainer.errors import InputError


def test_load_records_reads_history_as_string_or_list(tmp_path):
    as_list = make_record(0) | {"historyList": ["A", "B"]}
    path = write_records(tmp_path / "d.json", [make_record(0), as_list])
    first, second = load_records(path)
    assert first.history == tuple(f"Old Band 0-{i}" for i in range(5))
    assert second.history == ("A", "B")
    assert first.target in first.candidates and len(first.candidates) == 20


@pytest.mark.parametrize(
    "change, message",
    [
        ({"itemList": None}, "record 1: field 'itemList': expected a list"),
        ({"trueSelection": "Nobody"}, "record 1: field 'trueSelection': 'Nobody' is not one of the candidates"),
        ({"itemList": ["X", "Y", "X"], "trueSelection": "X"}, "record 1: field 'itemList': duplicate candidate 'X'"),
        ({"historyList": 7}, "record 1: field 'historyList'"),
        ({"itemList": ["X", ""], "trueSelection": "X"}, "record 1: field 'itemList'"),
        ({"itemList": ["Per Gessle; Roxette", "Y"], "trueSelection": "Y"},
         "record 1: field 'itemList': title 'Per Gessle; Roxette' contains '; ', which separates the titles"),
        ({"historyList": ["A", "Line\nbreak"]}, "record 1: field 'historyList': title 'Line\\nbreak' contains a line break"),
        ({"historyList": "A::Para\u2029graph"}, "record 1: field 'historyList': title 'Para\\u2029graph' contains a line break"),
    ],
)
def test_bad_records_name_file_record_and_field(tmp_path, change, message):
    path = write_records(tmp_path / "bad.json", [make_record(0), make_record(1) | change])
    with pytest.raises(InputError) as error:
        load_records(path)
    assert str(error.value).startswith(f"{path}: {message}")


def test_an_unlistable_title_error_says_what_the_converter_writes_instead(tmp_path):
    path = write_records(tmp_path / "bad.json", [make_record(0) | {"itemList": ["Per Gessle; Roxette", "Y"],
                                                                  "trueSelection": "Y"}])
    with pytest.raises(InputError, match="rename it \\(data/prepare.py writes 'Per Gessle, Roxette'\\)"):
        load_records(path)


def test_missing_field_and_bad_files(tmp_path):
    record = make_record(0)
    del record["trueSelection"]
    path = write_records(tmp_path / "missing.json", [record])
    with pytest.raises(InputError, match=r"missing.json: record 0: field 'trueSelection' is missing"):
        load_records(path)
    (tmp_path / "broken.json").write_text('[{"historyList": ')
    with pytest.raises(InputError, match=r"broken.json: not a JSON file"):
        load_records(str(tmp_path / "broken.json"))
    (tmp_path / "object.json").write_text(json.dumps({"a": 1}))
    with pytest.raises(InputError, match=r"object.json: expected a JSON list"):
        load_records(str(tmp_path / "object.json"))
    with pytest.raises(InputError, match=r"nothing.json: file not found"):
        load_records(str(tmp_path / "nothing.json"))
    with pytest.raises(InputError, match=r"record 3: expected an object"):
        parse_record(["not", "a", "dict"], "x.json", 3)


def test_select_indices_all_or_seeded_sample():
    assert select_indices(10, None, 3) == list(range(10))
    sample = select_indices(100, 5, seed=7)
    assert sample == select_indices(100, 5, seed=7) == sorted(sample)
    assert sample != select_indices(100, 5, seed=8)
    assert select_indices(4, 10, seed=1) == [0, 1, 2, 3]
