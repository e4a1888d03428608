"""dataprep/llara_layout.py (data/prepare.py): the LLaRA conversion against the S-DPO authors' published file, and bad input."""

import json
import os
import random

import numpy as np
import pandas as pd
import pytest

from trainer.data import load_records, parse_record
from trainer.errors import InputError
from dataprep.llara_files import read_split, split_paths, to_text, write_split_text
from dataprep.llara_layout import (Catalogue, PoolWithout, distinct_per_row, independent_candidates, movielens_title,
                                   prepare, sample_candidates, splitmix64)


def test_llara_draw_reproduces_the_golden_validation_file(lastfm_source, shared_data_dir, tmp_path):
    """From the split the repository ships as text to the S-DPO authors' own file, record for record."""
    counts = prepare(source=lastfm_source, output_dir=str(tmp_path), negative_draw="llara", audit=False)
    assert counts == {"train": 47872, "valid": 2767, "test": 2495}
    with open(tmp_path / "valid.json", encoding="utf-8") as handle:
        converted = json.load(handle)
    with open(os.path.join(shared_data_dir, "golden", "lastfm-val.json"), encoding="utf-8") as handle:
        golden = json.load(handle)
    assert len(converted) == len(golden) == 2767
    mismatches = [index for index, (ours, theirs) in enumerate(zip(converted, golden)) if ours != theirs]
    assert mismatches == []


def test_candidates_hold_the_true_item_and_no_history_item():
    catalogue = Catalogue(range(50))
    candidates = sample_candidates(history_ids=[1, 2, 3], next_id=7, catalogue=catalogue, negatives_per_list=19)
    assert len(candidates) == len(set(candidates)) == 20
    assert 7 in candidates and not {1, 2, 3} & set(candidates)
    assert candidates == sample_candidates([1, 2, 3], 7, catalogue, 19)


@pytest.mark.parametrize("num_items", [30, 5000])  # random.sample copies small pools and indexes large ones
def test_pool_read_in_place_samples_as_the_filtered_list(num_items):
    """LLaRA's procedure filters the catalogue into a list; reading it in place must draw the same items."""
    ids = [item * 7 + 3 for item in range(num_items)]  # ids in catalogue order, not positions
    catalogue = Catalogue(ids)
    for seed in range(20):
        picker = random.Random(seed)
        history = picker.sample(ids, 10)
        target = picker.choice([item for item in ids if item not in history])
        pool = [item for item in ids if item not in set(history) | {target}]
        assert list(PoolWithout(ids, {catalogue.position[item] for item in history + [target]})) == pool
        rng = random.Random(target)
        expected = rng.sample(pool, 19) + [target]
        rng.seed(target)
        rng.shuffle(expected)
        assert sample_candidates(history, target, catalogue, 19) == expected


def test_too_few_items_for_the_negatives_is_an_error():
    with pytest.raises(InputError, match="--negatives_per_list 19: only 6 items"):
        sample_candidates([0, 1, 2], 3, Catalogue(range(10)), 19)


def draw_independent(excluded, targets, catalogue_size, negatives_per_list, rows):
    seeds = splitmix64(np.uint64(7), np.asarray(rows, dtype=np.uint64))
    return independent_candidates(np.asarray(excluded), np.asarray(targets), catalogue_size, negatives_per_list, seeds)


def test_independent_draw_is_uniform_over_the_allowed_items_without_replacement():
    """Items 0-3 are the history, 4 the target: the 15 negatives of each of 4,000 records come from
    the 25 others, each drawn with probability 15/25, and the target's place is uniform over 16."""
    records = 4000
    excluded = np.tile([0, 1, 2, 3, -1, 4], (records, 1))  # -1: a padded history slot
    candidates = draw_independent(excluded, np.full(records, 4), 30, 15, range(records))
    assert candidates.shape == (records, 16)
    assert all(len(set(row)) == 16 for row in candidates.tolist())
    assert ((candidates == 4).sum(axis=1) == 1).all() and not np.isin(candidates, [0, 1, 2, 3, -1]).any()
    share = np.bincount(candidates.ravel(), minlength=30)[5:] / records
    # Binomial(4000, 0.6): standard deviation 0.0077 of a share; 5 of them is a 1-in-a-million miss.
    assert np.abs(share - 15 / 25).max() < 0.04
    places = np.bincount((candidates == 4).argmax(axis=1), minlength=16) / records
    assert np.abs(places - 1 / 16).max() < 0.025  # sd 0.0038


def slow_independent_draw(excluded: list[int], target: int, catalogue_size: int, negatives_per_list: int,
                          seed: int) -> list[int]:
    """The documented draw, one record at a time: SplitMix64 output 0 of the record's seed places the target,
    outputs 1, 2, ... are positions below the catalogue size, each kept unless excluded or drawn before."""
    def output(draw: int) -> int:
        return int(splitmix64(np.uint64(seed), np.uint64(draw)))

    negatives, draw = [], 1
    while len(negatives) < negatives_per_list:
        position = (output(draw) >> 11) * catalogue_size // 2**53
        draw += 1
        if position not in excluded and position not in negatives:
            negatives.append(position)
    place = (output(0) >> 11) * (negatives_per_list + 1) // 2**53
    return negatives[:place] + [target] + negatives[place:]


def test_splitmix64_gives_the_published_outputs():
    # Vigna's SplitMix64 seeded with 0 (prng.di.unimi.it): its first four outputs.
    assert [int(value) for value in splitmix64(np.uint64(0), np.arange(4))] == [
        0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F, 0xF88BB8A8724C81EC]


def test_independent_draw_equals_the_slow_definition():
    """Every record's list, drawn together in rounds and in chunks, is the one the sequential definition gives
    (breaks caught: a draw counter running backwards, an initial slot value that shadows position 1 or 2)."""
    generator = np.random.default_rng(3)
    excluded = generator.integers(-1, 30, size=(300, 5))
    targets = excluded[:, -1].clip(min=0)
    excluded[:, -1] = targets
    seeds = splitmix64(np.uint64(7), np.arange(300, dtype=np.uint64))
    together = independent_candidates(excluded, targets, 30, 19, seeds)
    for row in range(300):
        expected = slow_independent_draw(excluded[row].tolist(), int(targets[row]), 30, 19, int(seeds[row]))
        assert together[row].tolist() == expected, f"record {row}"


def test_catalogue_positions_by_hand():
    catalogue = Catalogue([50, 30, 90])
    assert catalogue.positions(np.array([[30, 40], [90, 50]])).tolist() == [[1, -1], [2, 0]]
    assert catalogue.positions(np.array([100, 10])).tolist() == [-1, -1]  # beyond either end: none


def test_distinct_positions_per_row_by_hand():
    # -1 pads a row and counts as none; position 0 is a position; repeats count once.
    rows = np.array([[-1, 0, 0, 3], [2, 2, 5, 5], [-1, -1, -1, -1], [0, 4, 4, 4]])
    assert distinct_per_row(rows).tolist() == [2, 2, 0, 2]


def test_independent_draw_depends_only_on_each_records_own_seed():
    excluded = np.array([[0, 1, 2], [3, 4, 5], [6, 7, 8], [0, 5, 9]])
    targets = np.array([2, 5, 8, 9])
    together = draw_independent(excluded, targets, 40, 19, [10, 11, 12, 13])
    alone = [draw_independent(excluded[i : i + 1], targets[i : i + 1], 40, 19, [10 + i])[0] for i in range(4)]
    assert (together == np.stack(alone)).all()
    assert not (together == draw_independent(excluded, targets, 40, 19, [20, 21, 22, 23])).all()


def test_independent_draw_takes_every_item_left_when_the_pool_is_exactly_the_negatives():
    """Nine items, three excluded, six negatives: the draw must find the last free items, however long."""
    candidates = draw_independent([[0, 1, 2]] * 50, [2] * 50, 9, 6, range(50))
    assert all(sorted(row) == [2, 3, 4, 5, 6, 7, 8] for row in candidates.tolist())


def test_independent_conversion_is_seeded_valid_and_never_offers_the_history(tmp_path):
    pad = 40
    rows = [([i % 40, (i + 1) % 40, (i + 2) % 40, pad], 3, (i + 3) % 40) for i in range(120)]
    write_llara(tmp_path / "src", rows, titles=[f"T{i}" for i in range(40)])
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        prepare(str(tmp_path / "src"), str(tmp_path / name), negatives_per_list=19, negative_draw="independent", seed=seed)
    read = {name: (tmp_path / name / "train.json").read_text() for name in "abc"}
    assert read["a"] == read["b"] != read["c"]
    assert (tmp_path / "a" / "train.json").read_text() != (tmp_path / "a" / "test.json").read_text()
    for record in load_records(str(tmp_path / "a" / "train.json")):
        assert len(record.candidates) == 20 and not set(record.history) & set(record.candidates)


def test_independent_draw_with_too_few_items_names_the_row(tmp_path):
    write_llara(tmp_path / "src", [([0, 1, 5, 5], 2, 2), ([0, 1, 2, 5], 3, 3)])
    with pytest.raises(InputError, match=r"train_data.df: row 1: --negatives_per_list 2: only 1 items"):
        prepare(str(tmp_path / "src"), str(tmp_path / "out"), negatives_per_list=2, min_history=2, negative_draw="independent")
    assert not (tmp_path / "out").exists()


def test_movielens_titles_drop_the_year_and_put_the_article_first():
    assert movielens_title("Usual Suspects, The (1995)") == "The Usual Suspects"
    assert movielens_title("City of Lost Children, The (Cité des enfants perdus, La) (1995)") == \
        "The City of Lost Children (Cité des enfants perdus, La)"
    assert movielens_title("Toy Story (1995)") == "Toy Story"
    assert movielens_title("unknown") == "unknown"


def test_movielens_layout_with_rating_pairs_and_capitalised_split_files(tmp_path):
    """LLaRA's MovieLens folder: u.item in latin-1 with 1-based ids, seq of (id, rating) pairs."""
    source = tmp_path / "movielens"
    source.mkdir()
    items = ["Toy Story (1995)", "GoldenEye (1995)", "Usual Suspects, The (1995)", "Café au lait (1993)",
             "Chasers (1994)", "Chasers (1994)"]
    (source / "u.item").write_bytes("".join(f"{i + 1}|{title}|01-Jan-1995||http://x|0|1\n"
                                            for i, title in enumerate(items)).encode("latin-1"))
    pad = (len(items), 0)
    rows = [([(0, 4), (1, 3), (2, 5), pad], 3, (3, 4))]
    for file_name in ("train_data.df", "Val_data.df", "Test_data.df"):
        pd.DataFrame(rows, columns=["seq", "len_seq", "next"]).to_pickle(source / file_name)
    prepare(str(source), str(tmp_path / "out"), negatives_per_list=2)
    record = json.loads((tmp_path / "out" / "test.json").read_text(encoding="utf-8"))[0]
    assert record["historyList"] == "Toy Story::GoldenEye::The Usual Suspects"
    assert record["trueSelection"] == "Café au lait"
    assert sorted(record["itemList"]) == ["Café au lait", "Chasers", "Chasers (2)"]  # a film listed twice


def write_llara(folder, rows, titles=("A", "B", "C", "D", "E"), suffix=".df"):
    folder.mkdir(exist_ok=True)
    (folder / "id2name.txt").write_text("".join(f"{i}::{t}\n" for i, t in enumerate(titles)))
    for stem in ("train_data", "val_data", "test_data"):
        frame = pd.DataFrame(rows, columns=["seq", "len_seq", "next"])
        if suffix == ".df":
            frame.to_pickle(folder / f"{stem}.df")
        else:
            write_split_text(frame, str(folder / f"{stem}.tsv"))


def test_small_conversion_and_padding(tmp_path):
    pad = 5
    write_llara(tmp_path / "src", [([0, 1, 2, pad], 3, 3), ([0, pad, pad, pad], 1, 1)])
    prepare(str(tmp_path / "src"), str(tmp_path / "out"), negatives_per_list=1)
    records = json.loads((tmp_path / "out" / "train.json").read_text())
    assert len(records) == 1  # the len_seq=1 row is dropped
    assert records[0]["historyList"] == "A::B::C" and records[0]["trueSelection"] == "D"
    assert sorted(records[0]["itemList"]) == ["D", "E"]  # E is the only item left to sample


def test_histories_of_different_lengths_and_padding_anywhere(tmp_path):
    pad = 5
    write_llara(tmp_path / "src", [([0, 1, 2], 3, 3), ([pad, 0, 1, 2, pad], 4, 4)])
    prepare(str(tmp_path / "src"), str(tmp_path / "out"), negatives_per_list=1)
    records = json.loads((tmp_path / "out" / "train.json").read_text())
    assert [record["historyList"] for record in records] == ["A::B::C", "A::B::C"]
    assert [record["trueSelection"] for record in records] == ["D", "E"]


def test_a_title_holding_the_history_separator_keeps_the_history_a_list(tmp_path):
    write_llara(tmp_path / "src", [([0, 1, 2, 5], 3, 3)], titles=("A", "Mix::Tape", "C", "D", "E"))
    prepare(str(tmp_path / "src"), str(tmp_path / "out"), negatives_per_list=1)
    records = json.loads((tmp_path / "out" / "train.json").read_text())
    assert records[0]["historyList"] == ["A", "Mix::Tape", "C"]
    assert parse_record(records[0], "train.json", 0).history == ("A", "Mix::Tape", "C")


def test_titles_a_prompt_cannot_list_are_rewritten_and_stay_distinct(tmp_path):
    titles = ("Per Gessle; Roxette", "Per Gessle, Roxette", "Line\u2028break", "D", "E")
    write_llara(tmp_path / "src", [([0, 1, 2, 5], 3, 3)], titles=titles)
    prepare(str(tmp_path / "src"), str(tmp_path / "out"), negatives_per_list=1)
    record = load_records(str(tmp_path / "out" / "train.json"))[0]
    assert record.history == ("Per Gessle, Roxette", "Per Gessle, Roxette (2)", "Line break")


def test_records_are_written_as_json_dumps_writes_them(tmp_path):
    titles = ('Say "Hi"', "Back\\slash", "Tab\there", "Émilie Simon", "Mix::Tape", "Plain")
    write_llara(tmp_path / "src", [([0, 1, 2, 6], 3, 3), ([0, 1, 3, 4], 4, 5)], titles=titles)
    prepare(str(tmp_path / "src"), str(tmp_path / "out"), negatives_per_list=1)
    lines = (tmp_path / "out" / "train.json").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "[" and lines[-1] == "]"
    for line in lines[1:-1]:
        element = line.rstrip(",")
        assert element == json.dumps(json.loads(element), ensure_ascii=False)
    records = load_records(str(tmp_path / "out" / "train.json"))
    assert records[0].history == titles[:3] and records[1].history == titles[:2] + titles[3:5]


def test_unknown_item_id_is_reported_and_nothing_is_written(tmp_path):
    write_llara(tmp_path / "src", [([0, 1, 2, 5], 3, 42)])
    with pytest.raises(InputError, match=r"train_data.df: row 0: field 'next': unknown item id 42"):
        prepare(str(tmp_path / "src"), str(tmp_path / "out"), negatives_per_list=1)
    assert not (tmp_path / "out").exists()


def test_bad_title_file_names_the_line(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "id2name.txt").write_text("0::A\nnot a pair\n")
    with pytest.raises(InputError, match=r"id2name.txt: line 2"):
        prepare(str(tmp_path / "src"), str(tmp_path / "out"))


@pytest.mark.parametrize("damage", ["truncated", "not a frame"])
def test_a_damaged_split_file_is_named_and_nothing_is_written(tmp_path, damage):
    write_llara(tmp_path / "src", [([0, 1, 2, 5], 3, 4)])
    path = tmp_path / "src" / "val_data.df"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:40])
        message = r"val_data.df: not a readable pickled DataFrame \("
    else:
        pd.to_pickle([1, 2, 3], path)
        message = r"val_data.df: holds a list, not a DataFrame"
    with pytest.raises(InputError, match=message):
        prepare(str(tmp_path / "src"), str(tmp_path / "out"), negatives_per_list=1)
    assert not (tmp_path / "out").exists()


def test_the_shipped_split_holds_the_authors_pickles_row_for_row(lastfm_source, shared_data_dir):
    """data/lastfm-source (text) against the LLaRA pickles it was exported from: every row, every field."""
    for split, text_path in split_paths(lastfm_source).items():
        assert text_path.endswith(".tsv"), "the repository ships text, no pickle"
        pickle_path = split_paths(os.path.join(shared_data_dir, "lastfm"), (".df",))[split]
        shipped, original = read_split(text_path), read_split(pickle_path)
        assert len(shipped) == len(original) > 0
        for column in ("seq", "len_seq", "next"):
            assert [np.asarray(value).tolist() for value in shipped[column]] == \
                [np.asarray(value).tolist() for value in original[column]], (split, column)
    with open(os.path.join(shared_data_dir, "lastfm", "id2name.txt"), "rb") as original:
        assert (open(os.path.join(lastfm_source, "id2name.txt"), "rb").read() == original.read())


def test_text_and_pickle_splits_convert_to_the_same_records(tmp_path):
    pad = 5
    rows = [([0, 1, 2, pad], 3, 3), ([pad, pad, pad, pad], 1, 0), ([1, 2, 3, pad], 3, 0)]
    write_llara(tmp_path / "pickles", rows)
    write_llara(tmp_path / "text", rows, suffix=".tsv")
    for source in ("pickles", "text"):
        prepare(str(tmp_path / source), str(tmp_path / f"out-{source}"), negatives_per_list=1, audit=False)
    for split in ("train", "valid", "test"):
        assert (tmp_path / "out-text" / f"{split}.json").read_text() == (tmp_path / "out-pickles" / f"{split}.json").read_text()


def test_to_text_round_trips_ids_and_rating_pairs_and_keeps_the_title_file(tmp_path):
    """MovieLens' (id, rating) pairs, padding anywhere and an empty seq survive the export unchanged."""
    source = tmp_path / "movielens"
    source.mkdir()
    (source / "u.item").write_bytes("1|Café (1995)|x\n2|B (1990)|x\n".encode("latin-1"))
    frames = {"train_data.df": pd.DataFrame({"seq": [[(0, 4), (1, 3), (2, 0)], []], "len_seq": [2, 0],
                                             "next": [(1, 5), (0, 1)]}),
              "Val_data.df": pd.DataFrame({"seq": [[2, 0, 2]], "len_seq": [1], "next": [1]}),
              "Test_data.df": pd.DataFrame({"seq": [[0, 1]], "len_seq": [2], "next": [0]})}
    for name, frame in frames.items():
        frame.to_pickle(source / name)
    counts = to_text(str(source), str(tmp_path / "text"))
    assert counts == {"train_data.tsv": 2, "Val_data.tsv": 1, "Test_data.tsv": 1}
    assert (tmp_path / "text" / "u.item").read_bytes() == (source / "u.item").read_bytes()
    assert (tmp_path / "text" / "train_data.tsv").read_text() == "seq\tlen_seq\tnext\n0,4 1,3 2,0\t2\t1,5\n\t0\t0,1\n"
    for name, frame in frames.items():
        again = read_split(str(tmp_path / "text" / name.replace(".df", ".tsv")))
        for column in ("seq", "len_seq", "next"):
            assert [np.asarray(value).tolist() for value in again[column]] == \
                [np.asarray(value).tolist() for value in frame[column]]


def test_a_text_split_is_read_before_a_pickle_of_the_same_split(tmp_path):
    write_llara(tmp_path / "src", [([0, 1, 2, 5], 3, 3)])
    write_split_text(pd.DataFrame({"seq": [[0, 1, 2, 5]], "len_seq": [3], "next": [4]}),
                     str(tmp_path / "src" / "train_data.tsv"))
    assert split_paths(str(tmp_path / "src"))["train"].endswith("train_data.tsv")
    prepare(str(tmp_path / "src"), str(tmp_path / "out"), negatives_per_list=1, audit=False)
    assert load_records(str(tmp_path / "out" / "train.json"))[0].target == "E"


@pytest.mark.parametrize("line, message", [
    ("0 1 x\t3\t4", r"line 3: field 'seq': 'x' is not an id"),
    ("0 1 2\tthree\t4", r"line 3: field 'len_seq': 'three' is not a count"),
    ("0 1 2\t3\t4,5,6", r"line 3: field 'next': '4,5,6' is not an id"),
    ("0 1 2\t3", r"line 3: expected 3 tab-separated fields \(seq, len_seq, next\), got 2"),
])
def test_a_bad_line_of_a_text_split_is_named_and_nothing_is_written(tmp_path, line, message):
    write_llara(tmp_path / "src", [([0, 1, 2, 5], 3, 3)], suffix=".tsv")
    path = tmp_path / "src" / "val_data.tsv"
    path.write_text(path.read_text() + line + "\n")
    with pytest.raises(InputError, match="val_data.tsv: " + message):
        prepare(str(tmp_path / "src"), str(tmp_path / "out"), negatives_per_list=1)
    assert not (tmp_path / "out").exists()


def test_a_text_split_names_the_line_of_an_unknown_id_and_checks_its_header(tmp_path):
    write_llara(tmp_path / "src", [([0, 1, 2, 5], 3, 3), ([0, 1, 2, 5], 3, 42)], suffix=".tsv")
    with pytest.raises(InputError, match=r"train_data.tsv: row 1 \(line 3\): field 'next': unknown item id 42"):
        prepare(str(tmp_path / "src"), str(tmp_path / "out"), negatives_per_list=1)
    path = tmp_path / "src" / "train_data.tsv"
    path.write_text("history\tnext\n" + path.read_text().split("\n", 1)[1])
    with pytest.raises(InputError, match=r"train_data.tsv: line 1: expected the header 'seq\\tlen_seq\\tnext'"):
        prepare(str(tmp_path / "src"), str(tmp_path / "out"), negatives_per_list=1)


def test_a_missing_split_file_names_both_forms(tmp_path):
    write_llara(tmp_path / "src", [([0, 1, 2, 5], 3, 3)])
    os.remove(tmp_path / "src" / "test_data.df")
    with pytest.raises(InputError, match=r"no test split: expected test_data.tsv or Test_data.tsv or test_data.df"):
        prepare(str(tmp_path / "src"), str(tmp_path / "out"), negatives_per_list=1)


def test_the_domain_is_recorded_for_the_stages_and_an_unknown_one_refused(tmp_path):
    write_llara(tmp_path / "src", [([0, 1, 2, 5], 3, 3)])
    prepare(str(tmp_path / "src"), str(tmp_path / "out"), negatives_per_list=1, audit=False, domain="game")
    assert json.loads((tmp_path / "out" / "run_config.json").read_text())["domain"] == "game"
    with pytest.raises(InputError, match="--domain: unknown domain 'songs'"):
        prepare(str(tmp_path / "src"), str(tmp_path / "other"), negatives_per_list=1, domain="songs")
    assert not (tmp_path / "other").exists()
