"""Records, their validation errors, prompt building and tokenization."""

import json

import pytest
from conftest import make_record, write_records

from trainer.data_interface import (
    ANSWER_CUE,
    DOMAINS,
    TITLE_SEPARATOR,
    PromptBuilder,
    Record,
    encode_answer,
    encode_prompt,
    load_records,
    parse_record,
    select_indices,
    supervised_example,
    templates_for,
)
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


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_every_template_fills_both_placeholders_and_ends_with_the_cue(domain):
    record = Record(history=("H1", "H2"), candidates=("C1", "C2", "C3"), target="C2")
    templates = templates_for(domain)
    assert len(set(templates)) == len(templates) >= 5
    for index in range(len(templates)):
        prompt = PromptBuilder(domain, template_index=index).build(record, example_index=0)
        assert prompt.endswith(ANSWER_CUE)
        assert f"H1{TITLE_SEPARATOR}H2" in prompt and f"C1{TITLE_SEPARATOR}C2{TITLE_SEPARATOR}C3" in prompt
        assert "{" not in prompt and "}" not in prompt


def test_unknown_domain_and_template_index_are_input_errors():
    with pytest.raises(InputError, match="--domain"):
        PromptBuilder("podcast")
    with pytest.raises(InputError, match="--template_index"):
        PromptBuilder("music", template_index=99)


def test_training_templates_are_seeded_by_run_seed_and_example_index():
    builder = PromptBuilder("music", seed=1)
    drawn = [builder.template(index) for index in range(40)]
    assert drawn == [PromptBuilder("music", seed=1).template(index) for index in range(40)]
    assert len(set(drawn)) > 1, "templates should vary across examples"
    assert drawn != [PromptBuilder("music", seed=2).template(index) for index in range(40)]
    fixed = PromptBuilder("music", seed=1, template_index=3)
    assert {fixed.template(index) for index in range(10)} == {templates_for("music")[3]}


def test_over_budget_prompt_drops_oldest_history_first(tokenizer):
    history = tuple(f"Artist Number {i}" for i in range(10))
    record = Record(history=history, candidates=("Cand A", "Cand B"), target="Cand A")
    full = PromptBuilder("music", template_index=0).build(record, 0)
    budget = len(tokenizer(full).input_ids) - 8
    trimmed = PromptBuilder("music", tokenizer, budget, template_index=0).build(record, 0)
    assert len(tokenizer(trimmed).input_ids) <= budget
    assert "Artist Number 0" not in trimmed and "Artist Number 9" in trimmed
    assert "Cand A; Cand B" in trimmed and trimmed.endswith(ANSWER_CUE)
    with pytest.raises(InputError, match="without any history"):
        PromptBuilder("music", tokenizer, 10, template_index=0).build(record, 0)


def test_cutting_a_long_history_keeps_the_most_titles_that_fit_in_few_tokenizations(tokenizer):
    history = tuple(f"Artist {'Long ' * (i % 5)}{i}" for i in range(1000))
    record = Record(history=history, candidates=("Cand A", "Cand B"), target="Cand A")
    template = templates_for("music")[0]

    def tokens_with(start: int) -> int:
        prompt = template.format(history=TITLE_SEPARATOR.join(history[start:]), candidates="Cand A; Cand B")
        return len(tokenizer(prompt).input_ids)

    before_history, after_history = template.split("{history}")[0], template.split("{history}")[1].split("{")[0]

    for budget in (300, 2000, 4567):
        builder = PromptBuilder("music", tokenizer, budget, template_index=0)
        calls = []
        counting = builder._count_tokens
        builder._count_tokens = lambda text: calls.append(text) or counting(text)
        trimmed = builder.build(record, 0)
        kept = trimmed[len(before_history):].split(after_history)[0].split(TITLE_SEPARATOR)
        dropped = len(history) - len(kept)
        assert tuple(kept) == history[dropped:], "the newest titles are kept, in order"
        assert tokens_with(dropped) <= budget < tokens_with(dropped - 1), "the longest history that fits"
        assert len(calls) <= 2 + 10, "log2(1000) tokenizations, not one per dropped title"


def test_supervised_example_masks_the_prompt_and_ends_with_eos(tokenizer):
    prompt = "A listener played: Muse. Answer:"
    example = supervised_example(tokenizer, prompt, "Genesis P-Orridge")
    prompt_length = len(encode_prompt(tokenizer, prompt))
    assert example["labels"][:prompt_length] == [-100] * prompt_length
    assert example["labels"][prompt_length:] == example["input_ids"][prompt_length:]
    assert example["input_ids"][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(example["input_ids"][prompt_length:-1]) == " Genesis P-Orridge"


def test_separate_tokenization_equals_joint_for_every_lastfm_title(tokenizer, shared_data_dir):
    """Prompt and answer tokenized apart give the same ids as the joined text, for every title."""
    prompt = "Choose one. " + ANSWER_CUE
    prompt_ids = encode_prompt(tokenizer, prompt)
    with open(f"{shared_data_dir}/lastfm/id2name.txt", encoding="utf-8") as handle:
        titles = [line.rstrip("\n").split("::", 1)[1] for line in handle if line.strip()]
    mismatched = [
        title for title in titles
        if prompt_ids + encode_answer(tokenizer, title)[:-1] != tokenizer(prompt + " " + title).input_ids
    ]
    assert len(titles) == 4606 and mismatched == []
