"""trainer/prompts.py: templates, prompt building within a token budget, and tokenization."""

import os

import pytest

from trainer.data import TITLE_SEPARATOR, Record
from trainer.errors import InputError
from trainer.prompts import (ANSWER_CUE, DOMAINS, PromptBuilder, encode_answer, encode_prompt, supervised_example,
                             templates_for)


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


def test_separate_tokenization_equals_joint_for_every_lastfm_title(tokenizer, lastfm_source):
    """Prompt and answer tokenized apart give the same ids as the joined text, for every title."""
    prompt = "Choose one. " + ANSWER_CUE
    prompt_ids = encode_prompt(tokenizer, prompt)
    with open(os.path.join(lastfm_source, "id2name.txt"), encoding="utf-8") as handle:
        titles = [line.rstrip("\n").split("::", 1)[1] for line in handle if line.strip()]
    mismatched = [
        title for title in titles
        if prompt_ids + encode_answer(tokenizer, title)[:-1] != tokenizer(prompt + " " + title).input_ids
    ]
    assert len(titles) == 4606 and mismatched == []
