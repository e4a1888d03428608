"""The preference stage on a tiny random LLaMA: batches, log-probs, TRL parity, training, the entry scripts."""

import collections
import copy
import inspect
import json
import math
import os
import random
import re
import types

import pytest
import torch
from torch.nn.attention.flex_attention import create_mask
from conftest import lora_model, make_record, write_records
from datasets import Dataset
from peft import PeftModel
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.trainer_pt_utils import LengthGroupedSampler
from trl import DPOConfig, DPOTrainer

from dpo import dpo
from softmax_dpo import softmax_dpo
from trainer.collaborative import load_hints, statistics_of
from trainer.data import parse_record
from trainer.errors import InputError
from trainer.evaluation import ANSWER_TOKENS, answer_and_score
from trainer.losses import dynamic_negatives, napo_margins, napo_shared_negatives, preference_loss
from trainer.logprobs import (collate_packed, completion_logps, completion_token_counts, first_predicting_position,
                              pack_example, packed_attention, packed_attention_mask, packed_completion_logps)
from trainer.modeling import load_tokenizer
from trainer.metrics import match_answer
from trainer.negatives import (SCORE_CACHE_FOLDER, _cache_key, highest_scored_others, own_answer_first,
                               rejected_titles, sample_negatives, sample_popular_negatives)
from trainer.preference_stage import preference_dataset, sample_records
from trainer.preference_trainer import (LENGTH_COLUMN, MultiNegativeCollator, MultiNegativeDPOConfig,
                                        MultiNegativeDPOTrainer, NegativeScoreBaseline, REFERENCE_COLUMN)
from trainer.prompts import PromptBuilder, answer_text, preference_example
from trainer.training import token_throughput


def examples(tokenizer, count: int, neg_num: int) -> list[dict]:
    builder = PromptBuilder("music", seed=0)
    rows = []
    for index in range(count):
        record = parse_record(make_record(index), "made-up", index)
        # Titles of uneven token lengths: the chosen one gets a long tail on some examples.
        target = record.target + " and the Extraordinarily Long Orchestra" * (index % 2)
        rejected = sample_negatives(record, neg_num, seed=0, example_index=index)
        rows.append(preference_example(tokenizer, builder.build(record, index)[: 40 + 17 * index], target, rejected))
    return rows


def slow_completion_logp(model, prompt_ids, completion_ids) -> torch.Tensor:
    """One unpadded sequence, full logits: the definition, computed the obvious way."""
    input_ids = torch.tensor([prompt_ids + completion_ids])
    logits = model(input_ids=input_ids).logits[0].float()
    token_logps = logits[:-1].log_softmax(-1).gather(-1, input_ids[0, 1:, None]).squeeze(-1)
    return token_logps[len(prompt_ids) - 1:].sum()


def test_plain_collator_rows_are_example_major_and_left_padded(tokenizer):
    rows = examples(tokenizer, 2, neg_num=3)
    batch = MultiNegativeCollator(tokenizer.pad_token_id, packed=False)(rows)
    assert batch["input_ids"].shape[0] == 2 * 4
    for example_index, example in enumerate(rows):
        for completion_index, completion in enumerate(example["completion_ids"]):
            row = example_index * 4 + completion_index
            length = len(example["prompt_ids"]) + len(completion)
            assert batch["input_ids"][row, -length:].tolist() == example["prompt_ids"] + completion
            assert batch["attention_mask"][row].sum() == length and batch["attention_mask"][row, -length:].all()
            assert batch["completion_mask"][row].sum() == len(completion)
            assert batch["completion_mask"][row, -len(completion):].all()


def test_packed_rows_by_hand():
    # Prompt [5, 6] with completions [7, 8] and [9]; prompt [1, 2, 3] with [4] and [4, 4]. The second row is
    # one token longer, so the first gets one padding token on the left.
    batch = collate_packed([pack_example([5, 6], [[7, 8], [9]]), pack_example([1, 2, 3], [[4], [4, 4]])], 0)
    assert batch["input_ids"].tolist() == [[0, 5, 6, 7, 8, 9], [1, 2, 3, 4, 4, 4]]
    # Positions restart after the prompt for every completion.
    assert batch["position_ids"].tolist() == [[0, 0, 1, 2, 3, 2], [0, 1, 2, 3, 3, 4]]
    assert batch["segments"].tolist() == [[-2, -1, -1, 0, 0, 1], [-1, -1, -1, 0, 1, 1]]
    assert packed_attention(batch["segments"])[0].int().tolist() == [
        [1, 0, 0, 0, 0, 0],  # padding: itself only
        [0, 1, 0, 0, 0, 0],  # prompt
        [0, 1, 1, 0, 0, 0],
        [0, 1, 1, 1, 0, 0],  # completion 0: the prompt and itself
        [0, 1, 1, 1, 1, 0],
        [0, 1, 1, 0, 0, 1],  # completion 1: the prompt and itself, not completion 0
    ]
    # The prompt's last token predicts each completion's first token; then each token predicts the next.
    assert batch["predictors"].tolist() == [[2, 3, 2], [2, 2, 4]]
    assert batch["targets"].tolist() == [[7, 8, 9], [4, 4, 4]]
    assert batch["owners"].tolist() == [[0, 0, 1], [0, 1, 1]]


def test_packing_refuses_an_empty_prompt_or_completion():
    """Either empty part alone is refused, with the reason (the breaks caught: `and` for `or`, the message)."""
    for prompt, completions in (([], [[7]]), ([5], [[7], []])):
        with pytest.raises(ValueError, match="^packing needs a non-empty prompt and non-empty completions$"):
            pack_example(prompt, completions)


def test_completion_token_counts_by_hand():
    """simpo_sdpo's lengths in the packed layout: prompt [5, 6] with completions [7, 8], [9] and [3, 3, 3];
    prompt [1] with [4], [2] and [6], whose 3 target tokens against the first row's 6 leave 3 owners of -1
    that count for no completion (the breaks caught: padding counted for completion 0, completion 0
    skipped, counts sized by the wrong axis, float counts, prompts aligned by default)."""
    packed = [pack_example([5, 6], [[7, 8], [9], [3, 3, 3]]), pack_example([1], [[4], [2], [6]])]
    batch = collate_packed(packed, 0)
    # Left-padded by default: both rows end at the last position (aligning the prompts is the evaluation's).
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 3, 3, 3], [0, 0, 0, 0, 1, 4, 2, 6]]
    assert batch["owners"].tolist() == [[0, 0, 1, 2, 2, 2], [0, 1, 2, -1, -1, -1]]
    counts = completion_token_counts(batch["owners"], 3)
    assert counts.tolist() == [[2, 1, 3], [1, 1, 1]] and counts.dtype == torch.long


@pytest.mark.parametrize("align_prompts", [False, True])
def test_the_first_predicting_position_follows_from_the_batch_shape(align_prompts):
    generator = random.Random(0)
    for _ in range(200):
        packed = [pack_example([1] * generator.randint(1, 9),
                               [[2] * generator.randint(1, 5) for _ in range(generator.randint(1, 4))])
                  for _ in range(generator.randint(1, 5))]
        batch = collate_packed(packed, 0, align_prompts=align_prompts)
        earliest = int(batch["predictors"][batch["owners"] >= 0].min())
        assert first_predicting_position(batch) == earliest


def batch_logps(model, rows, packed: bool) -> torch.Tensor:
    width = len(rows[0]["completion_ids"])
    batch = MultiNegativeCollator(0, packed=packed)(rows)
    if packed:
        return packed_completion_logps(model, batch, width)
    return completion_logps(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"]).view(-1, width)


@pytest.mark.parametrize("completion_mask, message", [
    ([[0, 1, 1], [0, 0, 0]], "^every row needs at least one completion token$"),
    ([[1, 1, 0], [0, 1, 1]], "^a completion cannot start at position 0: nothing precedes its first token$"),
])
def test_completion_logps_refuse_a_row_it_cannot_score(completion_mask, message):
    """Found by mutation testing: neither check was reached by a test. The model is never called."""
    ids = torch.ones(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match=message):
        completion_logps(None, ids, torch.ones_like(ids), torch.tensor(completion_mask))


@pytest.mark.parametrize("packed", [True, False])
def test_completion_logps_match_the_slow_definition(tiny_model_dir, tokenizer, packed):
    model = lora_model(tiny_model_dir)
    rows = examples(tokenizer, 3, neg_num=2)
    fast = batch_logps(model, rows, packed)
    slow = torch.stack([torch.stack([slow_completion_logp(model, example["prompt_ids"], completion)
                                     for completion in example["completion_ids"]]) for example in rows])
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-4)
    fast.sum().backward()
    gradients = [parameter.grad for parameter in model.parameters() if parameter.requires_grad]
    assert all(torch.isfinite(gradient).all() for gradient in gradients), "padding must not leak NaN"
    assert any(gradient.abs().sum() > 0 for gradient in gradients)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("neg_num", [1, 3, 7, 19])
def test_packed_equals_plain_in_values_and_lora_gradients(tiny_model_dir, tokenizer, neg_num, attention):
    model = lora_model(tiny_model_dir)
    model.base_model.model.config._attn_implementation = attention
    rows = examples(tokenizer, 3, neg_num=neg_num)
    results = []
    for packed in (True, False):
        model.zero_grad()
        logps = batch_logps(model, rows, packed)
        # A loss that weighs completions unevenly, so every gradient path counts.
        (logps * torch.linspace(-1, 1, logps.numel()).view_as(logps)).sum().backward()
        results.append((logps.detach(), {name: parameter.grad.clone() for name, parameter in model.named_parameters()
                                         if parameter.requires_grad}))
    (packed_logps, packed_grads), (plain_logps, plain_grads) = results
    torch.testing.assert_close(packed_logps, plain_logps, rtol=0, atol=1e-4)
    for name, gradient in packed_grads.items():
        torch.testing.assert_close(gradient, plain_grads[name], rtol=1e-3, atol=1e-5)


def test_flex_attention_block_mask_gives_the_packed_pattern_and_values(tiny_model_dir, tokenizer):
    rows = examples(tokenizer, 3, neg_num=3)
    batch = MultiNegativeCollator(0, packed=True)(rows)
    model = lora_model(tiny_model_dir)
    model.base_model.model.config._attn_implementation = "flex_attention"
    block_mask = packed_attention_mask(model, batch["segments"])
    batch_size, length = batch["segments"].shape
    dense = create_mask(block_mask.mask_mod, batch_size, 1, length, length, device="cpu")
    assert torch.equal(dense[:, 0], packed_attention(batch["segments"]))
    # FlexAttention has no backward on a CPU: the values here, the gradients on a GPU (bench/attention_kernels.py).
    with torch.no_grad():
        flex = packed_completion_logps(model, batch, 4)
        model.base_model.model.config._attn_implementation = "sdpa"
        sdpa = packed_completion_logps(model, batch, 4)
        torch.testing.assert_close(flex, sdpa, rtol=0, atol=1e-4)
        # Rows longer than FlexAttention's 128-token blocks, laid out differently: the first mostly padding
        # (its late queries attend no key of block 0), the second a 200-token prompt its late answers read.
        # A block mask built for one row and broadcast to both skips the second row's needed blocks.
        long_batch = collate_packed([pack_example([5] * 10, [[6] * 3, [7] * 2]),
                                     pack_example([5, 8] * 100, [[6] * 60, [7] * 60])], 0)
        model.base_model.model.config._attn_implementation = "flex_attention"
        flex = packed_completion_logps(model, long_batch, 2)
        model.base_model.model.config._attn_implementation = "sdpa"
        torch.testing.assert_close(flex, packed_completion_logps(model, long_batch, 2), rtol=0, atol=1e-4)


def test_an_attention_the_packed_forward_cannot_mask_is_named():
    """flash_attention_2 takes no dense or block mask: the packed forward refuses it by name (the break
    caught: the refusal without its message)."""
    model = types.SimpleNamespace(config=types.SimpleNamespace(_attn_implementation="flash_attention_2"))
    with pytest.raises(ValueError, match="^the packed forward needs sdpa, eager or flex_attention, not "
                                         "'flash_attention_2'$"):
        packed_attention_mask(model, torch.zeros(1, 2, dtype=torch.long))


@pytest.mark.parametrize("beta", [0.0, -1.0])
def test_a_beta_that_cannot_train_is_refused(tiny_model_dir, tmp_path, beta):
    train_file = write_records(tmp_path / "train.json", [make_record(0)])
    with pytest.raises(InputError, match=f"--beta must be above 0, got {beta}"):
        softmax_dpo(model_name=tiny_model_dir, train_file=train_file, output_dir=str(tmp_path / "out"),
                    beta=beta, max_valid_samples=0)
    assert not (tmp_path / "out").exists()


def test_attention_kernel_is_checked_before_any_work(tiny_model_dir, tmp_path):
    train_file = write_records(tmp_path / "train.json", [make_record(0)])
    with pytest.raises(InputError, match="--attn_implementation: expected one of"):
        softmax_dpo(model_name=tiny_model_dir, train_file=train_file, output_dir=str(tmp_path / "out"),
                    attn_implementation="flash", max_valid_samples=0)
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="flex_attention needs a GPU"):
            softmax_dpo(model_name=tiny_model_dir, train_file=train_file, output_dir=str(tmp_path / "out"),
                        attn_implementation="flex_attention", max_valid_samples=0)
    assert not (tmp_path / "out").exists()


def trainer_config(tmp_path, **overrides) -> dict:
    settings = dict(output_dir=str(tmp_path), bf16=False, gradient_checkpointing=False, report_to="none",
                    dataloader_pin_memory=False, per_device_train_batch_size=2, learning_rate=1e-2,
                    warmup_steps=0, beta=0.7)
    return settings | overrides


def test_sdpo_with_one_negative_equals_trl_dpo_on_the_same_model_and_batch(tiny_model_dir, tokenizer, tmp_path):
    builder = PromptBuilder("music", seed=0)
    records = [parse_record(make_record(index), "made-up", index) for index in range(4)]
    text_rows = [{"prompt": builder.build(record, index), "chosen": answer_text(record.target),
                  "rejected": answer_text(sample_negatives(record, 1, seed=0, example_index=index)[0])}
                 for index, record in enumerate(records)]
    policy = lora_model(tiny_model_dir)
    policy_copy = copy.deepcopy(policy)
    trl_trainer = DPOTrainer(model=policy, args=DPOConfig(**trainer_config(tmp_path / "trl")),
                             train_dataset=Dataset.from_list(text_rows), processing_class=tokenizer)
    # TRL tokenizes the text itself; our examples reuse its token ids, so both see the same batch.
    trl_rows = [{key: row[key] for key in ("prompt_ids", "chosen_ids", "rejected_ids")}
                for row in trl_trainer.train_dataset]
    rows = [{"prompt_ids": row["prompt_ids"], "completion_ids": [row["chosen_ids"], row["rejected_ids"]]}
            for row in trl_rows]
    assert rows[0] == preference_example(tokenizer, text_rows[0]["prompt"], records[0].target,
                                         sample_negatives(records[0], 1, seed=0, example_index=0))
    our_trainer = MultiNegativeDPOTrainer(
        model=policy_copy, args=MultiNegativeDPOConfig(**trainer_config(tmp_path / "ours"), neg_num=1),
        train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    # Both trainers copied the adapter into a frozen "ref"; move the policies away from it, identically.
    for model in (policy, policy_copy):
        torch.manual_seed(1)
        for name, parameter in model.named_parameters():
            if ".default." in name:
                parameter.data += 0.5 * torch.randn_like(parameter)
    trl_loss = trl_trainer._compute_loss(policy, trl_trainer.data_collator(trl_rows), return_outputs=False)
    our_loss = our_trainer._compute_loss(policy_copy, our_trainer.data_collator(rows), return_outputs=False)
    assert abs(trl_loss.item() - 0.6931) > 1e-3, "policy and reference must differ for the check to mean anything"
    torch.testing.assert_close(our_loss, trl_loss, rtol=0, atol=1e-5)


def test_training_changes_lora_weights_and_leaves_the_reference_alone(tiny_model_dir, tokenizer, tmp_path):
    rows = examples(tokenizer, 4, neg_num=3)
    model = lora_model(tiny_model_dir)
    trainer = MultiNegativeDPOTrainer(
        model=model, args=MultiNegativeDPOConfig(**trainer_config(tmp_path), neg_num=3, max_steps=3,
                                                 logging_steps=1),
        train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    batch = trainer.data_collator(rows)
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters() if "lora_" in name}
    policy_before, reference_before = trainer._policy_and_reference_logps(model, batch)
    torch.testing.assert_close(policy_before, reference_before)
    trainer.train()
    policy_after, reference_after = trainer._policy_and_reference_logps(model, batch)
    torch.testing.assert_close(reference_after, reference_before, rtol=0, atol=1e-6)
    assert not torch.allclose(policy_after, policy_before)
    changed = [name for name, parameter in model.named_parameters()
               if ".default." in name and not torch.equal(parameter, before[name])]
    reference_names = [name for name in before if ".ref." in name]
    assert changed and reference_names
    assert all(torch.equal(model.get_parameter(name), before[name]) for name in reference_names)
    logged = trainer.state.log_history[0]
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                "logps/chosen", "logps/rejected"):
        assert key in logged


def test_step_metrics_stay_on_the_device_until_logged_and_average_by_hand(tiny_model_dir, tokenizer, tmp_path):
    trainer = MultiNegativeDPOTrainer(
        model=lora_model(tiny_model_dir),
        args=MultiNegativeDPOConfig(**trainer_config(tmp_path, beta=1.0), neg_num=2),
        train_dataset=Dataset.from_list(examples(tokenizer, 2, neg_num=2)), processing_class=tokenizer)
    trainer.model.train()
    # Micro-batch 1, one prompt: rewards chosen 1, rejected -1 and 0 (mean -0.5), margin 1.5, chosen
    # beats both. Micro-batch 2, two prompts against a zero reference: chosen -2 and -3, rejected
    # means -2.5 and -3, margins 0.5 and 0, chosen beats neither's best rejected.
    trainer._record_metrics(torch.tensor([[-1.0, -3.0, -2.0]]), torch.tensor([[-2.0, -2.0, -2.0]]))
    trainer._record_metrics(torch.tensor([[-2.0, -1.0, -4.0], [-3.0, -3.0, -3.0]]), torch.zeros(2, 3))
    assert len(trainer._pending_metrics["train"]) == 2 and not trainer._metrics["train"]
    trainer.log({"loss": 0.5})
    logged = trainer.state.log_history[-1]
    # The mean of the two micro-batch means, as DPOTrainer averages its per-step metrics.
    expected = {"rewards/chosen": (1 - 2.5) / 2, "rewards/rejected": (-0.5 - 2.75) / 2,
                "rewards/margins": (1.5 + 0.25) / 2, "rewards/accuracies": 0.5, "logps/chosen": (-1 - 2.5) / 2,
                "logps/rejected": (-2.5 - 2.75) / 2}
    assert {name: logged[name] for name in expected} == pytest.approx(expected)
    assert logged["loss"] == 0.5 and not trainer._pending_metrics["train"] and not trainer._metrics["train"]


@pytest.mark.parametrize("packed", [True, False])
def test_precomputed_reference_log_probs_equal_the_per_step_ones(tiny_model_dir, tokenizer, tmp_path, packed):
    rows = examples(tokenizer, 5, neg_num=3)
    trainers = []
    for precompute in (False, True):
        config = MultiNegativeDPOConfig(**trainer_config(tmp_path / str(precompute)), neg_num=3,
                                        packed_forward=packed, precompute_ref_log_probs=precompute, max_steps=2)
        trainers.append(MultiNegativeDPOTrainer(model=lora_model(tiny_model_dir), args=config,
                                                train_dataset=Dataset.from_list(rows), processing_class=tokenizer))
    per_step, precomputed = trainers
    stored = torch.tensor(precomputed.train_dataset[REFERENCE_COLUMN])
    assert stored.shape == (5, 4)
    batch = per_step.data_collator(rows)
    # Batches of 2 (precomputed) and of 5 differ in padding, hence a float32 rounding tolerance.
    torch.testing.assert_close(stored, per_step._reference_logps(per_step.model, batch), rtol=1e-6, atol=1e-4)
    precomputed_batch = precomputed.data_collator(list(precomputed.train_dataset))
    _, reference = precomputed._policy_and_reference_logps(precomputed.model, precomputed_batch)
    torch.testing.assert_close(reference, stored)
    precomputed.train()
    assert precomputed.state.global_step == 2


def test_precomputing_the_reference_keeps_the_training_order_and_losses(tiny_model_dir, small_data_dir, tmp_path):
    """The precomputation pass must not move torch's generator, which orders the training examples:
    with it and without it, every step sees the same prompts and logs the same numbers."""
    logged = {}
    for precompute in (False, True):
        output_dir = tmp_path / str(precompute)
        softmax_dpo(model_name=tiny_model_dir, train_file=f"{small_data_dir}/train.json",
                    valid_file=f"{small_data_dir}/valid.json", output_dir=str(output_dir), neg_num=3, batch_size=2,
                    max_steps=3, learning_rate=1e-2, warmup_ratio=0.0, logging_steps=1, max_valid_samples=4,
                    precompute_ref_log_probs=precompute)
        history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
        logged[precompute] = [(entry["loss"], entry["logps/chosen"]) for entry in history if "loss" in entry]
    assert len(logged[True]) == 3
    for (loss, chosen), (loss_precomputed, chosen_precomputed) in zip(logged[False], logged[True]):
        assert loss_precomputed == pytest.approx(loss, abs=1e-5)
        assert chosen_precomputed == pytest.approx(chosen, abs=1e-3)


def test_training_batches_hold_examples_of_similar_packed_length(tiny_model_dir, tokenizer, tmp_path):
    rows = examples(tokenizer, 64, neg_num=1)
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0)).tolist()
    shuffled = [rows[index] for index in order]
    trainer = MultiNegativeDPOTrainer(model=lora_model(tiny_model_dir),
                                      args=MultiNegativeDPOConfig(**trainer_config(tmp_path), neg_num=1),
                                      train_dataset=Dataset.from_list(shuffled), processing_class=tokenizer)
    lengths = [len(row["prompt_ids"]) + sum(map(len, row["completion_ids"])) for row in shuffled]
    assert trainer.train_dataset[LENGTH_COLUMN] == lengths
    sampler = trainer._get_train_sampler(trainer.train_dataset)
    assert isinstance(sampler, LengthGroupedSampler) and sampler.lengths == lengths

    def padding(indices: list[int]) -> int:
        """Pad tokens of batches of 2 drawn in this order: each pads its shorter example to the longer."""
        return sum(abs(lengths[first] - lengths[second]) for first, second in zip(indices[::2], indices[1::2]))

    # Drawn in file (random) order, batches pair far-apart lengths; grouped, neighbours.
    assert padding(list(sampler)) < padding(list(range(len(rows)))) / 4


def save_sft_adapter(tiny_model_dir, folder) -> str:
    lora_model(tiny_model_dir).save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("loss_type, packed_forward", [("sdpo", True), ("dmpo", False)])
def test_softmax_dpo_writes_a_trained_adapter(tiny_model_dir, small_data_dir, tmp_path, loss_type,
                                                   packed_forward):
    sft_dir = save_sft_adapter(tiny_model_dir, tmp_path / "sft")
    output_dir = tmp_path / "out"
    softmax_dpo(model_name=tiny_model_dir, train_file=f"{small_data_dir}/train.json",
                valid_file=f"{small_data_dir}/valid.json", output_dir=str(output_dir),
                adapter=sft_dir, loss_type=loss_type, packed_forward=packed_forward,
                neg_num=3, max_steps=2, batch_size=2,
                gradient_accumulation_steps=1, learning_rate=1e-2, warmup_ratio=0.0)
    assert not os.path.exists(output_dir / "ref"), "the frozen reference copy is not saved"
    trained, start = load_file(output_dir / "adapter_model.safetensors"), load_file(f"{sft_dir}/adapter_model.safetensors")
    assert trained.keys() == start.keys()
    assert any(not torch.equal(trained[name], start[name]) for name in trained)
    config = json.loads((output_dir / "run_config.json").read_text())
    assert config["loss_type"] == loss_type and config["adapter"] == sft_dir
    results = json.loads((output_dir / "train_results.json").read_text())
    assert "eval_rewards/accuracies" in results and results["valid_examples"] == 4
    assert results["train_tokens_per_second"] == pytest.approx(
        results["train_samples_per_second"] * results["train_tokens_per_example"], rel=1e-3)
    assert os.path.isfile(output_dir / "tokenizer.json")


def test_token_throughput_by_hand():
    # Three examples of 10, 20 and 30 tokens, trained at 2 examples a second: 20 tokens each, 40 a second.
    assert token_throughput({"train_samples_per_second": 2.0}, [10, 20, 30]) == {
        "train_tokens_per_example": 20.0, "train_tokens_per_second": 40.0}


def test_dpo_script_is_the_preference_stage_with_one_negative(tiny_model_dir, small_data_dir, tmp_path):
    parameters = inspect.signature(dpo).parameters
    assert parameters["loss_type"].default == "dpo" and parameters["neg_num"].default == 1
    assert dpo.__doc__.startswith("Pairwise DPO") and "Args:" in dpo.__doc__
    output_dir = tmp_path / "dpo"
    dpo(model_name=tiny_model_dir, train_file=f"{small_data_dir}/train.json", output_dir=str(output_dir),
        max_valid_samples=0, max_steps=1, batch_size=2, gradient_accumulation_steps=1)
    config = json.loads((output_dir / "run_config.json").read_text())
    assert (config["loss_type"], config["neg_num"], config["adapter"]) == ("dpo", 1, None)
    assert os.path.isfile(output_dir / "adapter_model.safetensors")


def test_too_many_negatives_fail_at_start_up_naming_the_record(tiny_model_dir, tmp_path):
    train_file = write_records(tmp_path / "train.json", [make_record(0), make_record(1, num_candidates=3)])
    output_dir = tmp_path / "out"
    with pytest.raises(InputError, match=r"train\.json: record 1: field 'itemList': 2 negatives available"):
        softmax_dpo(model_name=tiny_model_dir, train_file=train_file, output_dir=str(output_dir),
                    neg_num=3, max_valid_samples=0)
    assert not output_dir.exists()


def test_hinted_negatives_come_from_the_hint_counts(tiny_model_dir, tokenizer, tmp_path):
    # Both training records list the same candidates; "Band 0-5" followed "Old Band 0-0" once, in the
    # second record, so it leads the first record's hinted negatives and its hint.
    first, second = make_record(0), make_record(0)
    second["trueSelection"] = "Band 0-5"
    train_file = write_records(tmp_path / "train.json", [first, second])
    builder = PromptBuilder("music", template_index=0, hints=load_hints(train_file, 3, train_file))
    dataset = preference_dataset(sample_records(train_file, None, 0, 2), 0, builder, tokenizer, neg_num=2,
                                 negatives="hinted")
    rejected = [tokenizer.decode(ids[:-1]) for ids in dataset[0]["completion_ids"][1:]]
    # Then the first listed candidate without counts: "Band 0-0" is the answer, its own count left out.
    assert rejected == [" Band 0-5", " Band 0-1"]
    with pytest.raises(InputError, match="--negatives hinted ranks the candidates by the counts of --hint_file"):
        softmax_dpo(model_name=tiny_model_dir, train_file=train_file, output_dir=str(tmp_path / "out"),
                    negatives="hinted", max_valid_samples=0)
    with pytest.raises(InputError, match="--negatives: expected one of"):
        softmax_dpo(model_name=tiny_model_dir, train_file=train_file, output_dir=str(tmp_path / "out"),
                    negatives="easy", max_valid_samples=0)
    assert not (tmp_path / "out").exists()


def test_popular_negatives_follow_training_popularity_and_repeat(tokenizer, tmp_path):
    record = parse_record(make_record(0, num_candidates=4), "made-up", 0)
    others = [title for title in record.candidates if title != record.target]
    # Weights 1 + count: 1, 3 and 6 of 10; a single negative is drawn with those probabilities.
    counts = {others[0]: 0, others[1]: 2, others[2]: 5, record.target: 100}
    draws = collections.Counter(sample_popular_negatives(record, 1, seed, 0, counts)[0] for seed in range(6000))
    for title, weight in zip(others, (1, 3, 6)):
        assert draws[title] / 6000 == pytest.approx(weight / 10, abs=0.02)
    assert sorted(sample_popular_negatives(record, 3, 7, 0, counts)) == sorted(others)
    with pytest.raises(ValueError, match="cannot draw 4 negatives from 3"):
        sample_popular_negatives(record, 4, 7, 0, counts)
    # A title never a true item weighs 1, as one counted 0 times: 1, 1 and 2 of 4 here.
    draws = collections.Counter(sample_popular_negatives(record, 1, seed, 0, {others[2]: 1})[0] for seed in range(6000))
    for title, weight in zip(others, (1, 1, 2)):
        assert draws[title] / 6000 == pytest.approx(weight / 4, abs=0.02)
    # Seeded by run and example: the same draw again, in the same order, and another for another example.
    wide = parse_record(make_record(0, num_candidates=20), "made-up", 0)
    first = sample_popular_negatives(wide, 10, 7, 0, counts)
    assert first == sample_popular_negatives(wide, 10, 7, 0, counts)
    assert first != sample_popular_negatives(wide, 10, 7, 1, counts)
    assert first != sample_popular_negatives(wide, 10, 8, 0, counts)
    # The stage asks for them by name, with its seed and the example's index.
    assert rejected_titles(wide, 0, "popular", 10, 7, popularity=counts) == first
    # Through the stage: the training file's true items give the counts.
    train_file = write_records(tmp_path / "train.json", [make_record(0), make_record(1)])
    builder = PromptBuilder("music", template_index=0)
    dataset = preference_dataset(sample_records(train_file, None, 0, 2), 0, builder, tokenizer, neg_num=2,
                                 negatives="popular", popularity=statistics_of(train_file).popularity)
    assert len(dataset) == 2 and all(len(row["completion_ids"]) == 3 for row in dataset)


def test_highest_scored_others_skip_the_true_item_and_keep_ties_in_list_order():
    record = parse_record({"historyList": "", "itemList": ["A", "B", "C", "D"], "trueSelection": "B"}, "made-up", 0)
    assert highest_scored_others(record, [-3.0, -0.5, -1.0, -1.0], 2) == ["C", "D"]
    assert highest_scored_others(record, [-0.1, -0.5, -9.0, -1.0], 3) == ["A", "D", "C"]


def starting_model_negatives_run(tiny_model_dir, tmp_path, negatives: str):
    """An SFT adapter, 3 training records and the flags of a one-step S-DPO run with `negatives` from them."""
    sft_dir = tmp_path / "sft"
    lora_model(tiny_model_dir).save_pretrained(sft_dir)
    train_file = write_records(tmp_path / "train.json", [make_record(index) for index in range(3)])
    run = dict(model_name=tiny_model_dir, adapter=str(sft_dir), train_file=train_file, max_valid_samples=0,
               negatives=negatives, neg_num=2, max_steps=1, batch_size=3, gradient_accumulation_steps=1, seed=5,
               output_dir=str(tmp_path / "sdpo"))
    return sft_dir, train_file, run


def test_hard_negatives_are_the_sft_models_top_scored_mistakes_scored_once(tiny_model_dir, tokenizer, tmp_path,
                                                                            monkeypatch):
    sft_dir, train_file, run = starting_model_negatives_run(tiny_model_dir, tmp_path, "hard")
    softmax_dpo(**run)
    assert not (sft_dir / SCORE_CACHE_FOLDER).exists(), "the adapter folder is only read (it may be shared or read-only)"
    cached = list((tmp_path / "sdpo" / SCORE_CACHE_FOLDER).iterdir())
    assert len(cached) == 1 and not cached[0].name.endswith("-answers.json"), "scores and answers have their own files"
    scores = json.loads(cached[0].read_text())
    # The cached scores are the SFT model's: candidate scoring of the same prompts, recomputed here.
    model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(tiny_model_dir), str(sft_dir)).eval()
    examples = sample_records(train_file, None, 5, 2)
    builder = PromptBuilder("music", tokenizer, 512, seed=5)
    left = load_tokenizer(tiny_model_dir, padding_side="left")
    _, expected = answer_and_score(model, left, [builder.build(record, index) for index, record in examples],
                                   [record for _, record in examples], 3, 0, True)
    for row, expected_row in zip(scores, expected):
        assert row == pytest.approx(expected_row, abs=1e-4)
    dataset = preference_dataset(examples, 5, builder, tokenizer, 2, "hard", scores=scores)
    for (_, record), row, example in zip(examples, scores, dataset):
        rejected = [tokenizer.decode(ids[:-1]).strip() for ids in example["completion_ids"][1:]]
        assert rejected == highest_scored_others(record, row, 2)
    # A rerun of the stage reads the cache instead of scoring again.
    with monkeypatch.context() as patched:
        patched.setattr("trainer.evaluation.answer_and_score", lambda *args, **kwargs: pytest.fail("scored twice"))
        softmax_dpo(**run)
    # Other adapter weights in the same folder are another starting model: scored again.
    lora_model(tiny_model_dir, seed=1).save_pretrained(sft_dir)
    softmax_dpo(**run)
    assert len(list((tmp_path / "sdpo" / SCORE_CACHE_FOLDER).iterdir())) == 2
    # Other prompts over the same candidates (another domain's wording) score otherwise: scored again. (The
    # stage's cache key built without the prompts survived mutation testing before this.)
    softmax_dpo(**run | {"domain": "movie"})
    assert len(list((tmp_path / "sdpo" / SCORE_CACHE_FOLDER).iterdir())) == 3


def test_own_answer_first_by_hand():
    """SPRec's self-play negatives: the model's wrong answer, then others drawn as the random rule draws."""
    record = parse_record({"historyList": "", "itemList": ["A", "B", "C", "D", "E"], "trueSelection": "B"}, "made-up", 0)
    assert own_answer_first(record, "D", 1, 7, 3) == ["D"]
    drawn = own_answer_first(record, "D", 3, 7, 3)
    assert drawn[0] == "D" and len(set(drawn)) == 3 and not {"B"} & set(drawn)
    assert drawn == own_answer_first(record, "D", 3, 7, 3) and drawn == rejected_titles(record, 3, "self", 3, 7,
                                                                                         own_answer="D")
    # A right answer, or one naming no single candidate, gives the random rule's draw.
    for answer in ("B", None):
        assert own_answer_first(record, answer, 2, 7, 3) == rejected_titles(record, 3, "random", 2, 7)
    with pytest.raises(ValueError, match="not a candidate"):
        own_answer_first(record, "Z", 2, 7, 3)
    with pytest.raises(ValueError, match="cannot draw 4 negatives from 3"):
        own_answer_first(record, "D", 5, 7, 3)
    assert sorted(own_answer_first(record, "D", 4, 7, 3)) == ["A", "C", "D", "E"]  # every other candidate
    # Seeded by the run and the example through rejected_titles: over 12 candidates, 5 drawn of 10 others.
    wide = parse_record({"historyList": "", "itemList": [f"T{i}" for i in range(12)], "trueSelection": "T0"},
                        "made-up", 0)
    drawn = rejected_titles(wide, 4, "self", 6, 11, own_answer="T3")
    assert drawn == own_answer_first(wide, "T3", 6, 11, 4) and drawn[1:] != own_answer_first(wide, "T3", 6, 12, 4)[1:]
    with pytest.raises(ValueError, match="cannot draw 5 negatives from 4"):
        sample_negatives(record, 5, 7, 3)


def test_self_play_negatives_are_the_starting_models_own_answers_answered_once(tiny_model_dir, tokenizer, tmp_path,
                                                                                monkeypatch):
    """--negatives self: the stage caches, per prompt, the candidate the SFT adapter's greedy answer names (as
    inference.py would answer), builds each example's rejected titles from it, and reads the cache on a rerun."""
    sft_dir, train_file, run = starting_model_negatives_run(tiny_model_dir, tmp_path, "self")
    softmax_dpo(**run)
    cached = list((tmp_path / "sdpo" / SCORE_CACHE_FOLDER).iterdir())
    assert [path.name.endswith("-answers.json") for path in cached] == [True]
    own_answers = json.loads(cached[0].read_text())
    model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(tiny_model_dir), str(sft_dir)).eval()
    examples = sample_records(train_file, None, 5, 2)
    builder = PromptBuilder("music", tokenizer, 512, seed=5)
    left = load_tokenizer(tiny_model_dir, padding_side="left")
    answers, _ = answer_and_score(model, left, [builder.build(record, index) for index, record in examples],
                                  [record for _, record in examples], 3, ANSWER_TOKENS, False)
    assert own_answers == [match_answer(answer, record.candidates) for answer, (_, record) in zip(answers, examples)]
    # Each example's rejected titles follow its answer; a wrong one given here comes first.
    wrong = [next(title for title in record.candidates if title != record.target) for _, record in examples]
    dataset = preference_dataset(examples, 5, builder, tokenizer, 2, "self", own_answers=wrong)
    for (index, record), answer, example in zip(examples, wrong, dataset):
        rejected = [tokenizer.decode(ids[:-1]).strip() for ids in example["completion_ids"][1:]]
        assert rejected == own_answer_first(record, answer, 2, 5, index) and rejected[0] == answer
    with monkeypatch.context() as patched:
        patched.setattr("trainer.evaluation.answer_and_score", lambda *args, **kwargs: pytest.fail("answered twice"))
        softmax_dpo(**run)


def test_the_score_cache_key_follows_the_base_the_adapter_weights_the_prompts_and_the_candidates(tmp_path,
                                                                                                 monkeypatch):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    (adapter / "README.md").write_text("about the adapter")
    records = [parse_record(make_record(0), "made-up", 0)]
    key = _cache_key("base", str(adapter), ["prompt"], records)
    assert key == _cache_key("base", str(adapter), ["prompt"], records)
    (adapter / "README.md").write_text("edited")  # not the weights
    assert _cache_key("base", str(adapter), ["prompt"], records) == key
    shuffled = parse_record(make_record(0) | {"itemList": make_record(0)["itemList"][::-1]}, "made-up", 0)
    others = [_cache_key("other base", str(adapter), ["prompt"], records),
              _cache_key("base", None, ["prompt"], records),
              _cache_key("base", str(adapter), ["other prompt"], records),
              _cache_key("base", str(adapter), ["prompt"], [shuffled])]
    (adapter / "adapter_model.safetensors").write_bytes(b"other weights")
    others.append(_cache_key("base", str(adapter), ["prompt"], records))
    assert len({key, *others}) == 6
    # Without an adapter, no folder is read: the working folder's files do not count.
    monkeypatch.chdir(adapter)
    assert _cache_key("base", None, ["prompt"], records) == others[1]


def test_qlora_preference_training_runs_in_4bit(tokenizer, small_data_dir, tmp_path):
    # bitsandbytes' CPU kernels need layers at least one quantization block (64) wide.
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    model_dir = str(tmp_path / "tiny-64")
    LlamaForCausalLM(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    output_dir = tmp_path / "qlora"
    softmax_dpo(model_name=model_dir, train_file=f"{small_data_dir}/train.json",
                valid_file=f"{small_data_dir}/valid.json", output_dir=str(output_dir), load_in_4bit=True,
                neg_num=2, max_steps=2, batch_size=2, gradient_accumulation_steps=1, learning_rate=1e-2,
                warmup_ratio=0.0)
    results = json.loads((output_dir / "train_results.json").read_text())
    assert math.isfinite(results["train_loss"]) and math.isfinite(results["eval_loss"])
    assert os.path.isfile(output_dir / "adapter_model.safetensors")


def test_select_best_needs_validation_records(tiny_model_dir, small_data_dir, tmp_path):
    """The kept checkpoint itself is tested in tests/test_robustness.py (the best of four, in the middle)."""
    output_dir = tmp_path / "out"
    with pytest.raises(InputError, match="--select_best keeps the checkpoint with the lowest validation loss"):
        softmax_dpo(model_name=tiny_model_dir, train_file=f"{small_data_dir}/train.json",
                    valid_file=f"{small_data_dir}/valid.json", adapter=save_sft_adapter(tiny_model_dir, tmp_path / "sft"),
                    output_dir=str(output_dir), eval_steps=1, max_valid_samples=0, select_best=True)
    assert not output_dir.exists()


def minus_log_sigmoid(x: float) -> float:
    return math.log1p(math.exp(-x))


def hand_loss(loss_type: str, chosen: float, rejected: list[float], reference_rejected: list[float]) -> float:
    """The losses that read a reference, from one example's rewards r = beta (log pi - log pi_ref), written out;
    the listwise one ranks the rejected titles by the reference's log-probs."""
    if loss_type == "sdpo":  # -log sigmoid(-log sum_j exp(r_j - r_chosen))
        return minus_log_sigmoid(-math.log(sum(math.exp(r - chosen) for r in rejected)))
    if loss_type == "dmpo":  # -log sigmoid(r_chosen - mean_j r_j)
        return minus_log_sigmoid(chosen - sum(rejected) / len(rejected))
    if loss_type == "listwise":  # sum over the ranking of -log(e^{u_i} / sum_{l >= i} e^{u_l})
        ranked = [chosen] + [reward for _, reward in sorted(zip(reference_rejected, rejected), key=lambda pair: -pair[0])]
        return sum(math.log(sum(math.exp(u) for u in ranked[i:])) - ranked[i] for i in range(len(ranked) - 1))
    return sum(minus_log_sigmoid(chosen - r) for r in rejected) / len(rejected)  # dpo: pairwise, averaged


def train_two_steps(tiny_model_dir, tokenizer, tmp_path, loss_type: str, beta: float, learning_rate: float = 0.05,
                    records: list[dict] | None = None, **flags):
    """An SFT adapter, then two logged steps of `loss_type` on 4 prompts (make_record's, unless `records`) x
    (1 + 3) titles, a checkpoint after each. Returns the SFT adapter, the output folder, the logged losses and
    the tokenized examples."""
    sft_dir = tmp_path / "sft"
    lora_model(tiny_model_dir).save_pretrained(sft_dir)
    train_file = write_records(tmp_path / "train.json", records or [make_record(index) for index in range(4)])
    output_dir = tmp_path / loss_type
    softmax_dpo(model_name=tiny_model_dir, adapter=str(sft_dir), train_file=train_file, output_dir=str(output_dir),
                loss_type=loss_type, neg_num=3, beta=beta, batch_size=4, gradient_accumulation_steps=1, max_steps=2,
                save_steps=1, logging_steps=1, learning_rate=learning_rate, warmup_ratio=0.0,
                lr_scheduler_type="constant", seed=5, **{"max_valid_samples": 0} | flags)
    logged = [entry["loss"] for entry in json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
              if "loss" in entry]
    rows = preference_dataset(sample_records(train_file, None, 5, 3), 5, PromptBuilder("music", tokenizer, 512, seed=5),
                              tokenizer, 3)
    return sft_dir, output_dir, logged, rows


def scored(adapter, tiny_model_dir, rows) -> list[list[float]]:
    """log pi(title | prompt) of every example's 1 + k titles under the tiny model with `adapter`."""
    model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(tiny_model_dir), str(adapter)).eval()
    with torch.no_grad():
        return [[float(slow_completion_logp(model, row["prompt_ids"], completion)) for completion in row["completion_ids"]]
                for row in rows]


@pytest.mark.parametrize("loss_type", ["dpo", "sdpo", "dmpo", "listwise"])
def test_each_loss_through_the_stage_matches_its_formula_and_not_the_others(tiny_model_dir, tokenizer, tmp_path,
                                                                             loss_type):
    """The second step's logged loss, recomputed by hand from the first checkpoint's and the SFT adapter's
    log-probs of the same 4 prompts x (1 + 3) titles. At the first step every reward is 0 (the policy starts
    as its reference), where DPO and DMPO coincide; after one update the formulas differ here by more
    than 0.01, so a stage training with another loss than the one asked for fails. (Breaks caught: the
    trainer's loss dispatch hard-coded to S-DPO passed every earlier preference-stage test.)"""
    beta = 2.0
    sft_dir, output_dir, logged, rows = train_two_steps(tiny_model_dir, tokenizer, tmp_path, loss_type, beta)
    policy, reference = scored(output_dir / "checkpoint-1", tiny_model_dir, rows), scored(sft_dir, tiny_model_dir, rows)
    losses = {name: 0.0 for name in ("dpo", "sdpo", "dmpo", "listwise")}
    for policy_row, reference_row in zip(policy, reference):
        rewards = [beta * (mine - theirs) for mine, theirs in zip(policy_row, reference_row)]
        for name in losses:
            losses[name] += hand_loss(name, rewards[0], rewards[1:], reference_row[1:]) / len(rows)
    assert logged[0] == pytest.approx(hand_loss(loss_type, 0.0, [0.0] * 3, reference[0][1:]), abs=1e-4), \
        "rewards 0 at step 1"
    assert logged[1] == pytest.approx(losses[loss_type], abs=2e-4)
    for other, value in losses.items():
        if other != loss_type:
            assert abs(value - losses[loss_type]) > 0.01, f"{other} and {loss_type} coincide on this batch"


def test_dynamicpo_options_through_the_stage(tiny_model_dir, tokenizer, tmp_path):
    """S-DPO with DynamicPO's boundary negatives and per-negative beta. At the first step every reward is 0,
    so each prompt's S-DPO loss is log(1 + its number of boundary negatives), which the SFT adapter's own
    log-probs decide. The second step's loss is S-DPO over the boundary negatives with their betas, both from
    the first checkpoint's log-probs (trainer.losses.dynamic_negatives, tested by hand in test_losses.py); after
    a large first step (learning rate 0.5) it differs here by more than 0.01 from S-DPO without the mask (0.65)
    and from S-DPO with one beta (0.03), so a stage that drops either option fails."""
    beta = 2.0
    sft_dir, output_dir, logged, rows = train_two_steps(tiny_model_dir, tokenizer, tmp_path, "sdpo", beta,
                                                         learning_rate=0.5, boundary_negatives=True, dynamic_beta=True)
    config = json.loads((output_dir / "run_config.json").read_text())
    assert config["boundary_negatives"] and config["dynamic_beta"] and config["dynamic_beta_margin"] == 6.0
    reference = torch.tensor(scored(sft_dir, tiny_model_dir, rows))
    boundary, _ = dynamic_negatives(reference[:, 0], reference[:, 1:], beta)
    assert not boundary.all(), "some negatives must be left out for the mask to matter"
    assert logged[0] == pytest.approx(torch.log1p(boundary.sum(dim=1).double()).mean().item(), abs=1e-4)
    policy = torch.tensor(scored(output_dir / "checkpoint-1", tiny_model_dir, rows))
    boundary, betas = dynamic_negatives(policy[:, 0], policy[:, 1:], beta)
    inputs = (policy[:, 0], policy[:, 1:], reference[:, 0], reference[:, 1:])
    expected = preference_loss("sdpo", *inputs, beta=betas, negative_mask=boundary).mean().item()
    assert logged[1] == pytest.approx(expected, abs=2e-4)
    for variant in (preference_loss("sdpo", *inputs, beta=betas), preference_loss("sdpo", *inputs, beta=beta,
                                                                                    negative_mask=boundary)):
        assert abs(variant.mean().item() - expected) > 0.01


def test_napo_through_the_stage(tiny_model_dir, tokenizer, tmp_path):
    """NAPO on 4 prompts in one batch whose histories overlap so that each has one nearest neighbour (Jaccard 4/6
    between the first two, 3/7 from the third to the second, 1/9 from the fourth to the first). Step 1: every
    reward is 0, so each prompt's loss is log(1 + sum over its pool of e^margin), the margins from the SFT
    adapter's mean token log-probs against their batch mean. Step 2: the same pool with the first checkpoint's
    rewards, the baseline now 0.9 x step 1's mean + 0.1 x this batch's, as the checkpoint records. A stage that
    drops the shared titles or the margins, or misplaces the baseline, fails by more than 0.01 here; one that
    keeps no moving average fails on the recorded baseline (the scores move too little in one step for the loss
    to tell)."""
    histories = ["A::B::C::D::E", "A::B::C::D::F", "A::B::F::X::Y", "E::Q::R::S::T"]
    records = [make_record(index) | {"historyList": history} for index, history in enumerate(histories)]
    beta, max_margin = 2.0, 1.5
    # Validated on 2 other prompts after training: validation reads the baseline but must not move it.
    valid_file = write_records(tmp_path / "valid.json", [make_record(index) for index in range(4, 6)])
    sft_dir, output_dir, logged, rows = train_two_steps(tiny_model_dir, tokenizer, tmp_path, "napo", beta,
                                                         learning_rate=0.5, records=records, napo_max_margin=max_margin,
                                                         valid_file=valid_file, max_valid_samples=None)
    config = json.loads((output_dir / "run_config.json").read_text())
    assert (config["napo_neighbours"], config["napo_max_margin"], config["napo_margin_decay"]) == (1, 1.5, 0.9)
    assert json.loads((output_dir / "train_results.json").read_text())["valid_examples"] == 2
    assert [row["history"] for row in rows] == [history.split("::") for history in histories]
    shared = napo_shared_negatives([row["history"] for row in rows], [row["completion_ids"] for row in rows], 1)
    assert shared.any(dim=-1).nonzero().tolist() == [[0, 1], [1, 0], [2, 1], [3, 0]]
    lengths = torch.tensor([list(map(len, row["completion_ids"])) for row in rows], dtype=torch.float32)
    reference = torch.tensor(scored(sft_dir, tiny_model_dir, rows))
    policy = torch.tensor(scored(output_dir / "checkpoint-1", tiny_model_dir, rows))
    first_scores, second_scores = reference[:, 1:] / lengths[:, 1:], policy[:, 1:] / lengths[:, 1:]
    margins = napo_margins(first_scores, first_scores.mean(), max_margin)
    pool = (shared | torch.eye(4, dtype=torch.bool).unsqueeze(-1)).flatten(1)  # [B, B k]
    assert logged[0] == pytest.approx(torch.log1p((margins.flatten().exp() * pool).sum(dim=1)).mean().item(), abs=1e-4)
    baseline = 0.9 * first_scores.mean() + 0.1 * second_scores.mean()
    for state_file in (output_dir / "checkpoint-2" / "trainer_state.json", output_dir / "trainer_state.json"):
        saved = json.loads(state_file.read_text())["stateful_callbacks"]
        assert saved["NegativeScoreBaseline"]["attributes"]["value"] == pytest.approx(baseline.item(), abs=1e-5)
    # The titles' scores move between the steps, so either step's mean alone is another value.
    assert abs(second_scores.mean() - first_scores.mean()).item() * 0.1 > 1e-4
    inputs = (policy[:, 0], policy[:, 1:], reference[:, 0], reference[:, 1:])

    def napo(pool: torch.Tensor, baseline: torch.Tensor, max_margin: float) -> float:
        return preference_loss("napo", *inputs, beta=beta, shared_negatives=pool,
                               negative_margins=napo_margins(second_scores, baseline, max_margin)).mean().item()

    expected = napo(shared, baseline, max_margin)
    assert logged[1] == pytest.approx(expected, abs=2e-4)
    # Nothing shared, no margins, or a baseline one nat per token off each move the loss by more than 0.01.
    for variant in (napo(torch.zeros_like(shared), baseline, max_margin), napo(shared, baseline, 0.0),
                    napo(shared, baseline + 1, max_margin)):
        assert abs(variant - expected) > 0.01


def test_negative_score_baseline_by_hand_and_across_a_restart():
    baseline = NegativeScoreBaseline(decay=0.25)
    # Before any training batch, an evaluation batch is measured from its own mean, and nothing is kept.
    assert baseline.baseline(torch.tensor([[1.0, 3.0]]), update=False).item() == 2.0 and baseline.value is None
    assert baseline.baseline(torch.tensor([[-1.0, -3.0]]), update=True).item() == -2.0
    assert baseline.baseline(torch.tensor([[-4.0], [-4.0]]), update=True).item() == -3.5  # 0.25 * -2 + 0.75 * -4
    assert baseline.baseline(torch.tensor([[10.0]]), update=False).item() == -3.5
    assert baseline.state() == {"args": {"decay": 0.25}, "attributes": {"value": -3.5}}
    restarted = NegativeScoreBaseline(decay=0.25)
    state = types.SimpleNamespace(global_step=3, stateful_callbacks={"NegativeScoreBaseline": baseline.state()})
    restarted.on_train_begin(None, state, None)
    assert restarted.baseline(torch.tensor([[-1.0]]), update=True).item() == -1.625  # 0.25 * -3.5 + 0.75 * -1
    fresh = NegativeScoreBaseline(decay=0.25)
    fresh.on_train_begin(None, types.SimpleNamespace(global_step=0, stateful_callbacks=state.stateful_callbacks), None)
    assert fresh.value is None


def test_napo_needs_the_histories_and_its_flags_only_napo(tiny_model_dir, small_data_dir, tmp_path, tokenizer):
    common = dict(model_name=tiny_model_dir, train_file=f"{small_data_dir}/train.json", max_valid_samples=0,
                  adapter=save_sft_adapter(tiny_model_dir, tmp_path / "sft"))
    for flags, message in (({"napo_neighbours": 2}, re.escape("--napo_neighbours: for ['napo'] only, not sdpo")),
                           ({"napo_max_margin": 0.0, "napo_margin_decay": 0.5},
                            re.escape("--napo_max_margin, --napo_margin_decay: for ['napo'] only, not sdpo")),
                           ({"loss_type": "napo", "napo_neighbours": -1}, "--napo_neighbours and --napo_max_margin"),
                           ({"loss_type": "napo", "napo_margin_decay": 1.0}, r"--napo_margin_decay in \[0, 1\)")):
        output_dir = tmp_path / "refused"
        with pytest.raises(InputError, match=message):
            softmax_dpo(**common, output_dir=str(output_dir), **flags)
        assert not output_dir.exists()
    rows = Dataset.from_list([preference_example(tokenizer, "a prompt", "yes", ["no"])])
    args = MultiNegativeDPOConfig(**trainer_config(tmp_path / "out"), loss_type="napo", neg_num=1)
    with pytest.raises(ValueError, match="napo compares the prompts' histories: the train dataset lacks the column"):
        MultiNegativeDPOTrainer(model=lora_model(tiny_model_dir), args=args, train_dataset=rows,
                                processing_class=tokenizer)


def reference_free_hand_loss(loss_type: str, logps: list[float], lengths: list[int], beta: float,
                             target_margin: float) -> float:
    """MPPO on the sequence probabilities, or simpo_sdpo on the mean token log-probs, written out."""
    if loss_type == "mppo":  # -log sigmoid(beta * sum_j (pi_w - pi_j))
        chance = [math.exp(logp) for logp in logps]
        return minus_log_sigmoid(beta * sum(chance[0] - other for other in chance[1:]))
    # simpo_sdpo: -log sigmoid(-log sum_j exp(beta * (s_j - s_w) + gamma)), s = log pi / |y|
    means = [logp / length for logp, length in zip(logps, lengths)]
    return minus_log_sigmoid(-math.log(sum(math.exp(beta * (mean - means[0]) + target_margin) for mean in means[1:])))


@pytest.mark.parametrize("loss_type, target_margin", [("mppo", 0.0), ("simpo_sdpo", 0.5)])
def test_a_loss_without_a_reference_trains_without_the_reference_pass(tiny_model_dir, tokenizer, tmp_path,
                                                                      monkeypatch, loss_type, target_margin):
    """MPPO and simpo_sdpo through the stage: the reference pass, precomputed or per step, never runs (it
    raises here), and each logged loss is the formula on the policy's own log-probs of the 4 prompts x
    (1 + 3) titles (and, for simpo_sdpo, the titles' token counts): the SFT adapter's at the first step,
    the first checkpoint's at the second."""
    def no_reference_pass(*args, **kwargs):
        raise AssertionError("a reference-free loss ran the reference pass")

    monkeypatch.setattr(MultiNegativeDPOTrainer, "_reference_logps", no_reference_pass)
    beta = 2.0
    sft_dir, output_dir, logged, rows = train_two_steps(tiny_model_dir, tokenizer, tmp_path, loss_type, beta,
                                                         target_margin=target_margin)
    assert json.loads((output_dir / "run_config.json").read_text())["loss_type"] == loss_type
    for step, adapter in enumerate((sft_dir, output_dir / "checkpoint-1")):
        expected = sum(reference_free_hand_loss(loss_type, logps, list(map(len, row["completion_ids"])), beta,
                                                target_margin)
                       for logps, row in zip(scored(adapter, tiny_model_dir, rows), rows)) / len(rows)
        assert logged[step] == pytest.approx(expected, abs=1e-4), f"step {step + 1}"
