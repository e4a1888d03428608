"""dataprep/interaction_log.py (data/prepare_log.py): a raw log to records, on a hand-made MovieLens-style log and on the real HetRec Last.fm log."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import REPO_ROOT, checkout_environment

from trainer.errors import InputError
from dataprep.interaction_log import prepare_log, split_windows, windows
from dataprep.llara_files import read_split as read_llara_split

HETREC = "hetrec-lastfm-2k"


def read_split(folder, name):
    with open(os.path.join(folder, f"{name}.json"), encoding="utf-8") as handle:
        return json.load(handle)


def write_movielens(folder, interactions, titles):
    """u.data (user, item, rating, timestamp; tab, no header) and u.item (id|title|...; latin-1)."""
    folder.mkdir(exist_ok=True)
    (folder / "u.data").write_text("".join(f"{user}\t{item}\t5\t{time}\n" for user, item, time in interactions))
    (folder / "u.item").write_bytes("".join(f"{index}|{title}|01-Jan-1995||http://x|0\n"
                                            for index, title in titles.items()).encode("latin-1"))


MOVIELENS_FLAGS = {"columns": "user,item,rating,time", "items_separator": "|", "items_columns": "id,title",
                   "encoding": "latin-1", "title_format": "movielens"}


def test_windows_split_by_time_first_interactions_only(tmp_path):
    titles = {item: f"Film {item}, The ({1990 + item})" for item in range(1, 31)}
    titles[7] = "Café {7} (1997)"
    # Two users, each a sequence of 8 films; user 1 re-watches film 3 (a repeat, dropped) and one
    # film is seen by nobody else often enough but stays: the k-core here asks 1 per item.
    first = [(1, item, 100 + step) for step, item in enumerate([1, 2, 3, 3, 4, 5, 6, 7, 8])]
    second = [(2, item, 50 + 10 * step) for step, item in enumerate([11, 12, 13, 14, 15, 16, 17, 18])]
    write_movielens(tmp_path / "ml", first + second, titles)
    output = tmp_path / "out"
    counts = prepare_log(str(tmp_path / "ml" / "u.data"), str(tmp_path / "ml" / "u.item"), str(output),
                         min_user_interactions=1, min_item_interactions=1, negatives_per_list=4, history_size=3,
                         valid_fraction=0.2, test_fraction=0.2, **MOVIELENS_FLAGS)
    assert counts["interactions"] == 16 and counts["users"] == 2 and counts["items"] == 16
    records = {name: read_split(output, name) for name in ("train", "valid", "test")}
    # 14 windows (7 per user), min_history 3 keeps the ones with 3 history items: 5 + 5.
    assert sum(len(split) for split in records.values()) == 10
    everything = [record for split in records.values() for record in split]
    assert any(record["historyList"] == "The Film 1::The Film 2::The Film 3" and record["trueSelection"] == "The Film 4"
               for record in everything)
    assert any(record["trueSelection"] == "Café {7}" for record in everything)
    for record in everything:
        history = record["historyList"].split("::")
        assert len(history) == 3 and record["trueSelection"] not in history
        assert record["trueSelection"] in record["itemList"] and len(record["itemList"]) == 5
        assert not set(history) & set(record["itemList"])
    # By time: the 20% latest of the 14 targets (times 108, 110, 120) are the test split, across both users.
    assert sorted(record["trueSelection"] for record in records["test"]) == ["The Film 17", "The Film 18", "The Film 8"]
    assert (output / "llara" / "id2name.txt").read_text(encoding="utf-8").splitlines()[0] == "0::The Film 1"
    frame = read_llara_split(str(output / "llara" / "train_data.tsv"))
    assert list(frame.columns) == ["seq", "len_seq", "next"] and all(len(seq) == 3 for seq in frame["seq"])


def hetrec_log(shared_data_dir, tmp_path, **flags):
    source = os.path.join(shared_data_dir, HETREC)
    output = tmp_path / "hetrec"
    counts = prepare_log(os.path.join(source, "user_taggedartists.dat"), os.path.join(source, "artists.dat"),
                         str(output), user_column="userID", item_column="artistID", time_column="year,month,day",
                         item_id_column="id", title_column="name", unknown_items="drop", **flags)
    return counts, output


def test_the_real_hetrec_log_converts_without_leakage_and_repeats(shared_data_dir, tmp_path):
    counts, output = hetrec_log(shared_data_dir, tmp_path)
    # Pinned: a change here changes every dataset built from a log. 1,538 tagging rows name an artist
    # missing from artists.dat and are dropped; the 5-core keeps 1,089 of 1,892 users.
    assert (counts["users"], counts["items"]) == (1089, 3624)
    assert counts["records"] == {"train": 38961, "valid": 5203, "test": 4991}
    for name in ("train", "valid", "test"):
        for record in read_split(output, name)[:200]:
            assert len(record["itemList"]) == 20 and record["trueSelection"] in record["itemList"]
    again, output_again = hetrec_log(shared_data_dir, tmp_path / "again")
    assert again == counts
    for name in ("train", "test"):
        assert (output / f"{name}.json").read_bytes() == (output_again / f"{name}.json").read_bytes()


def hetrec_windows(shared_data_dir, times_of):
    log = pd.read_csv(os.path.join(shared_data_dir, HETREC, "user_taggedartists.dat"), sep="\t")
    log = log.drop_duplicates(["userID", "artistID"]).sort_values(["userID", "year", "month", "day"], kind="stable")
    return windows(log["artistID"].to_numpy(), log["userID"].to_numpy(), times_of(log), 10, padding=-1)


def test_windows_slide_over_each_users_items_in_order():
    found = windows(np.array([5, 6, 7, 8, 9, 5, 6]), np.array([1, 1, 1, 1, 1, 2, 2]), np.arange(7), 3, padding=-1)
    assert found.histories.tolist() == [[5, -1, -1], [5, 6, -1], [5, 6, 7], [6, 7, 8], [5, -1, -1]]
    assert found.lengths.tolist() == [1, 2, 3, 3, 1]
    assert found.targets.tolist() == [6, 7, 8, 9, 6] and found.users.tolist() == [1, 1, 1, 1, 2]
    assert found.times.tolist() == [1, 2, 3, 4, 6]


def test_time_split_puts_every_test_target_after_every_training_one(shared_data_dir):
    found = hetrec_windows(shared_data_dir, lambda log: (log["year"] * 10000 + log["month"] * 100 + log["day"]).to_numpy())
    names = split_windows(found, "time", 0.1, 0.1, seed=0)
    target_times = {name: found.times[names == name] for name in ("train", "valid", "test")}
    assert target_times["train"].max() < target_times["valid"].min() <= target_times["valid"].max() < target_times["test"].min()
    assert 0.05 < len(target_times["test"]) / len(names) < 0.15
    # Every history ends before its target: nothing from a test target's future is in its prompt.
    assert not (found.histories == found.targets[:, None]).any()


def test_user_split_keeps_each_user_in_one_split(shared_data_dir):
    found = hetrec_windows(shared_data_dir, lambda log: log["year"].to_numpy())
    names = split_windows(found, "user", 0.1, 0.1, seed=3)
    users = {name: set(found.users[names == name].tolist()) for name in ("train", "valid", "test")}
    assert not users["train"] & users["test"] and not users["train"] & users["valid"] and not users["valid"] & users["test"]
    assert abs(len(users["test"]) / sum(map(len, users.values())) - 0.1) < 0.01
    assert (names == split_windows(found, "user", 0.1, 0.1, seed=3)).all()
    assert not (names == split_windows(found, "user", 0.1, 0.1, seed=4)).all()


@pytest.mark.parametrize("change, message", [
    ({"log": "1\t1\t5\tsoon\n"}, r"u.data: line 1: field 'time': 'soon' is not a number"),
    ({"log": "1\t99\t5\t10\n"}, r"u.data: line 1: field 'item': item '99' is not in"),
    ({"flags": {"columns": None}}, r"u.data: no column 'user'.*--columns"),
    ({"flags": {"split": "random"}}, r"--split must be one of"),
])
def test_bad_log_names_the_file_line_and_field_and_writes_nothing(tmp_path, change, message):
    write_movielens(tmp_path / "ml", [], {1: "Toy Story (1995)"})
    (tmp_path / "ml" / "u.data").write_text(change.get("log", "1\t1\t5\t10\n"))
    flags = MOVIELENS_FLAGS | change.get("flags", {})
    with pytest.raises(InputError, match=message):
        prepare_log(str(tmp_path / "ml" / "u.data"), str(tmp_path / "ml" / "u.item"), str(tmp_path / "out"),
                    **{key: value for key, value in flags.items() if value is not None})
    assert not (tmp_path / "out").exists()


def test_command_line_takes_comma_separated_column_names(tmp_path):
    """fire turns 'a,b,c' into a tuple: the list-valued flags accept both forms."""
    write_movielens(tmp_path / "ml", [(1, item, item) for item in range(1, 6)], {item: f"Film {item} (1990)"
                                                                                for item in range(1, 8)})
    flags = MOVIELENS_FLAGS | {"min_user_interactions": 1, "min_item_interactions": 1, "negatives_per_list": 1,
                               "history_size": 2, "min_history": 1, "split": "user", "valid_fraction": 0.3,
                               "test_fraction": 0.3}
    completed = subprocess.run([sys.executable, "data/prepare_log.py", "--interactions", str(tmp_path / "ml" / "u.data"),
                                "--items", str(tmp_path / "ml" / "u.item"), "--output_dir", str(tmp_path / "out"),
                                *[f"--{name}={value}" for name, value in flags.items()]],
                               cwd=REPO_ROOT, env=checkout_environment(), capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    config = json.loads((tmp_path / "out" / "run_config.json").read_text())
    assert config["counts"]["interactions"] == 5 and config["columns"] == ["user", "item", "rating", "time"]
