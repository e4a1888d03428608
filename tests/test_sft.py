"""sft.py on a tiny random LLaMA: answer-only batches and loss, training, saving, resuming."""

import json
import os

import pytest
import torch
from conftest import make_record
from datasets import Dataset
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from trl import SFTConfig

from sft import sft
from trainer.data import parse_record
from trainer.errors import InputError
from trainer.prompts import PromptBuilder, encode_prompt, supervised_example
from trainer.sft_trainer import AnswerCollator, AnswerOnlySFTTrainer


def test_answer_collator_left_pads_and_masks_prompt_and_padding(tokenizer):
    builder = PromptBuilder("music", seed=0)
    records = [parse_record(make_record(index), "made-up", index) for index in range(4)]
    prompts = [builder.build(record, index) for index, record in enumerate(records)]
    rows = [supervised_example(tokenizer, prompt, record.target) for prompt, record in zip(prompts, records)]
    batch = AnswerCollator(tokenizer.pad_token_id)(rows)
    width = batch["input_ids"].shape[1]
    for row, (input_ids, mask, labels, prompt) in enumerate(zip(batch["input_ids"], batch["attention_mask"],
                                                               batch["labels"], prompts)):
        length = len(rows[row]["input_ids"])
        padding = width - length
        assert mask.tolist() == [0] * padding + [1] * length
        assert (labels[: padding + len(encode_prompt(tokenizer, prompt))] == -100).all(), "prompt and padding"
        answer = labels[padding + len(encode_prompt(tokenizer, prompt)):]
        assert (answer == input_ids[width - len(answer):]).all() and answer[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(answer[:-1]) == " " + records[row].target


def test_answer_only_loss_equals_the_full_logits_loss(tiny_model_dir, tokenizer, tmp_path):
    """The head on answer positions only gives the mean answer-token NLL that full logits give."""
    builder = PromptBuilder("music", seed=0)
    records = [parse_record(make_record(index), "made-up", index) for index in range(3)]
    rows = [supervised_example(tokenizer, builder.build(record, index), record.target)
            for index, record in enumerate(records)]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    trainer = AnswerOnlySFTTrainer(
        model=model,
        args=SFTConfig(output_dir=str(tmp_path), max_length=None, bf16=False, report_to="none",
                       dataloader_pin_memory=False),
        train_dataset=Dataset.from_list(rows),
        data_collator=AnswerCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
    )
    batch = AnswerCollator(tokenizer.pad_token_id)(rows)
    answer_only = trainer.compute_loss(model, batch)
    # The model's own loss, from full logits of right-aligned rows with explicit positions.
    positions = (batch["attention_mask"].cumsum(dim=1) - 1).clamp(min=0)
    full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=positions,
                 labels=batch["labels"]).loss
    torch.testing.assert_close(answer_only, full, rtol=1e-5, atol=1e-5)


def lora_b_weights(folder):
    weights = load_file(os.path.join(folder, "adapter_model.safetensors"))
    return {name: tensor for name, tensor in weights.items() if "lora_B" in name}


def test_sft_trains_saves_and_resumes(tiny_model_dir, small_data_dir, tmp_path):
    output_dir = str(tmp_path / "sft")
    common = dict(
        model_name=tiny_model_dir,
        train_file=f"{small_data_dir}/train.json",
        valid_file=f"{small_data_dir}/valid.json",
        batch_size=4,
        learning_rate=1e-2,
        # With warm-up, the first step runs at learning rate 0 and could not move the weights.
        warmup_ratio=0.0,
        logging_steps=1,
    )
    sft(output_dir=output_dir, max_steps=2, **common)
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "run_config.json"):
        assert os.path.isfile(os.path.join(output_dir, name)), name
    with open(os.path.join(output_dir, "train_results.json")) as handle:
        results = json.load(handle)
    assert results["train_examples"] == 12 and results["valid_examples"] == 4 and results["eval_loss"] > 0
    assert results["train_tokens_per_example"] > 0
    with open(os.path.join(output_dir, "run_config.json")) as handle:
        assert json.load(handle)["learning_rate"] == 1e-2
    # LoRA's B matrices start at zero: training must have moved them.
    trained = lora_b_weights(output_dir)
    assert trained and all(tensor.abs().sum() > 0 for tensor in trained.values())

    resumed_dir = str(tmp_path / "resumed")
    sft(output_dir=resumed_dir, max_steps=1, adapter=output_dir, **common)
    resumed = lora_b_weights(resumed_dir)
    assert resumed.keys() == trained.keys()
    assert any(not torch.equal(resumed[name], trained[name]) for name in trained)


def test_select_best_needs_evaluations_to_choose_from(tiny_model_dir, small_data_dir, tmp_path):
    common = dict(model_name=tiny_model_dir, train_file=f"{small_data_dir}/train.json",
                  valid_file=f"{small_data_dir}/valid.json", output_dir=str(tmp_path / "out"), select_best=True)
    with pytest.raises(InputError, match="--select_best keeps the checkpoint with the lowest validation loss"):
        sft(**common)
    with pytest.raises(InputError, match=r"leave --save_steps at 0 or equal to --eval_steps \(2\), got 3"):
        sft(eval_steps=2, save_steps=3, **common)
    with pytest.raises(InputError, match="--eval_steps and --save_steps must be 0 or more"):
        sft(**(common | {"select_best": False, "eval_steps": -1}))
    assert not (tmp_path / "out").exists()


def test_no_validation_records_means_no_validation_as_in_the_preference_stages(tiny_model_dir, small_data_dir,
                                                                              tmp_path):
    common = dict(model_name=tiny_model_dir, train_file=f"{small_data_dir}/train.json",
                  valid_file=f"{small_data_dir}/valid.json", max_valid_samples=0)
    sft(output_dir=str(tmp_path / "out"), max_steps=1, **common)
    results = json.loads((tmp_path / "out" / "train_results.json").read_text())
    assert results["valid_examples"] == 0 and "eval_loss" not in results and results["train_examples"] == 12
    with pytest.raises(InputError, match="--select_best keeps the checkpoint with the lowest validation loss"):
        sft(output_dir=str(tmp_path / "best"), eval_steps=1, select_best=True, **common)
    with pytest.raises(InputError, match="--max_valid_samples must be 0 or more, got -1"):
        sft(output_dir=str(tmp_path / "bad"), **(common | {"max_valid_samples": -1}))
