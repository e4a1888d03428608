"""trainer/sequential.py and the trained baselines of trainer.baselines: shapes, causal masking, learning a
made-up sequence, ItemKNN by hand, and the outputs results.md reads."""

import json
import math

import pytest
import torch
from conftest import write_records

from trainer import sequential
from trainer.baselines import ItemKNN, rules
from trainer.data import Record, load_records
from trainer.errors import InputError
from trainer.sequential import (GRU4Rec, SASRec, Catalogue, TrainingSettings, candidate_scores, last_states,
                                train_sequential_model)


@pytest.mark.parametrize("model_class", [SASRec, GRU4Rec])
def test_states_have_one_vector_per_position(model_class):
    model = model_class(num_items=30, hidden_size=16, max_length=6).eval()
    items = torch.randint(1, 30, (4, 6))
    assert model(items).shape == (4, 6, 16)
    assert model.item_embeddings().shape == (30, 16)


@pytest.mark.parametrize("model_class", [SASRec, GRU4Rec])
def test_a_position_sees_only_the_items_up_to_it(model_class):
    """Changing the items after position 2 leaves the states of positions 0 to 2 as they were: no position
    reads the future, and the padding after a short history does not change its last state."""
    torch.manual_seed(0)
    model = model_class(num_items=30, hidden_size=16, max_length=6).eval()
    items = torch.tensor([[5, 7, 9, 11, 13, 15]])
    changed = torch.tensor([[5, 7, 9, 0, 0, 0]])
    with torch.no_grad():
        torch.testing.assert_close(model(items)[:, :3], model(changed)[:, :3])
        assert not torch.allclose(model(items)[:, 3:], model(changed)[:, 3:])


def cycle_records(count: int, items: int = 12, seed: int = 0) -> list[Record]:
    """Histories walking a cycle of `items` items; the true item is always the next on the cycle."""
    generator = torch.Generator().manual_seed(seed)
    records = []
    for _ in range(count):
        start = int(torch.randint(items, (1,), generator=generator))
        length = int(torch.randint(1, 6, (1,), generator=generator))
        sequence = [f"item {(start + step) % items}" for step in range(length + 1)]
        others = [f"item {index}" for index in range(items) if f"item {index}" != sequence[-1]]
        order = torch.randperm(len(others), generator=generator)[:4].tolist()
        candidates = [others[index] for index in order] + [sequence[-1]]
        records.append(Record(tuple(sequence[:-1]), tuple(sorted(candidates)), sequence[-1]))
    return records


@pytest.mark.parametrize("model_type", ["sasrec", "gru4rec"])
def test_a_model_learns_a_made_up_cycle(model_type):
    train, valid = cycle_records(600), cycle_records(100, seed=1)
    catalogue = Catalogue(train, valid)
    settings = TrainingSettings(hidden_size=16, dropout=0.0, learning_rate=1e-2, batch_size=64, max_epochs=30,
                                patience=30, max_length=5, seed=0)
    model, log = train_sequential_model(model_type, train, valid, catalogue, settings)
    assert log[-1]["valid_hr_at_1"] == 1.0 and log[0]["valid_hr_at_1"] < 1.0
    histories, lengths = catalogue.histories(valid, 5)
    scores = candidate_scores(model, histories, lengths, catalogue.candidates(valid))
    assert all(record.candidates[row.argmax()] == record.target for record, row in zip(valid, scores))


def test_early_stopping_keeps_the_best_epoch(monkeypatch):
    """Validation HR@1 set by hand to 0.2, 0.6, 0.4, 0.3: with patience 2, training stops after epoch 4 and
    keeps epoch 2's weights."""
    train, valid = cycle_records(64), cycle_records(16, seed=1)
    set_ratios = iter([0.2, 0.6, 0.4, 0.3])
    weights = []  # the weights each validation saw
    score = sequential.candidate_scores

    def recorded_scores(model, *args, **kwargs):
        weights.append(torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone())
        return score(model, *args, **kwargs)

    monkeypatch.setattr(sequential, "candidate_scores", recorded_scores)
    monkeypatch.setattr(sequential, "hit_ratio", lambda scores, records: next(set_ratios))
    settings = TrainingSettings(hidden_size=8, batch_size=16, max_epochs=10, patience=2, max_length=5)
    model, log = train_sequential_model("gru4rec", train, valid, Catalogue(train, valid), settings)
    assert [entry["epoch"] for entry in log] == [1, 2, 3, 4]
    assert not torch.equal(weights[1], weights[3])
    torch.testing.assert_close(torch.nn.utils.parameters_to_vector(model.parameters()), weights[1])


def test_item_knn_by_hand():
    train = [Record(("a", "b"), ("c", "x"), "c"),   # sequence {a, b, c}
             Record(("a",), ("b", "x"), "b"),        # sequence {a, b}
             Record(("d",), ("c", "x"), "c")]        # sequence {c, d}
    knn = ItemKNN(train)
    # a is in records 0 and 1, b in 0 and 1, c in 0 and 2: sim(a, b) = 2 / sqrt(2 * 2) = 1, sim(a, c) = 1 / 2.
    assert knn.similarity("a", "b") == 1.0 and knn.similarity("a", "c") == 0.5
    assert knn.similarity("a", "d") == 0.0 and knn.similarity("a", "unseen") == 0.0
    # History {a, d}: candidate c scores sim(a, c) + sim(d, c) = 1/2 + 1/sqrt(2); b scores 1 + 0.
    assert knn.scores(Record(("a", "d"), ("b", "c"), "c")) == pytest.approx([1.0, 0.5 + 1 / math.sqrt(2)])


@pytest.mark.parametrize("rule", ["itemknn", "gru4rec"])
def test_a_scored_rule_writes_what_inference_writes(tmp_path, rule):
    train_file = write_records(tmp_path / "train.json", [record_json(record) for record in cycle_records(200)])
    valid_file = write_records(tmp_path / "valid.json", [record_json(record) for record in cycle_records(20, seed=1)])
    test_file = write_records(tmp_path / "test.json", [record_json(record) for record in cycle_records(30, seed=2)])
    output_dir = tmp_path / rule
    rules(rule=rule, train_file=train_file, valid_file=valid_file, test_file=test_file, output_dir=str(output_dir),
          max_epochs=3, hidden_size=8, max_samples=10)
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert metrics["n"] == 10 and metrics["valid_ratio"] == 1.0 and "ranking_mrr" in metrics
    rows = [json.loads(line) for line in (output_dir / "predictions.jsonl").read_text().splitlines()]
    records = load_records(test_file)
    for row in rows:
        assert len(row["candidate_logps"]) == len(records[row["index"]].candidates)
        assert row["matched_candidate"] == row["top_scored_candidate"]
    assert (output_dir / "training_log.json").is_file() == (rule == "gru4rec")
    with pytest.raises(InputError, match="give a --test_file other than --train_file"):
        rules(rule=rule, train_file=train_file, test_file=train_file, output_dir=str(tmp_path / "same"))


def record_json(record: Record) -> dict:
    return {"historyList": list(record.history), "itemList": list(record.candidates), "trueSelection": record.target}


def test_last_states_read_each_historys_last_item():
    model = GRU4Rec(num_items=10, hidden_size=4, max_length=4).eval()
    histories = torch.tensor([[1, 2, 3, 0], [4, 0, 0, 0]])
    with torch.no_grad():
        states = model(histories)
        torch.testing.assert_close(last_states(model, histories, torch.tensor([3, 1])),
                                   torch.stack([states[0, 2], states[1, 0]]))
