"""sft.py on a tiny random LLaMA: answer-only labels through TRL, training, saving, resuming."""

import json
import os

import torch
from conftest import make_record
from datasets import Dataset
from peft import get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from trl import SFTConfig, SFTTrainer

from sft import sft
from trainer.data_interface import PromptBuilder, encode_prompt, parse_record, supervised_example
from trainer.modeling import LLAMA_PROJECTIONS, lora_config


def test_trl_batches_carry_minus_100_on_prompt_and_padding(tiny_model_dir, tokenizer, tmp_path):
    builder = PromptBuilder("music", seed=0)
    records = [parse_record(make_record(index), "made-up", index) for index in range(4)]
    prompts = [builder.build(record, index) for index, record in enumerate(records)]
    rows = [supervised_example(tokenizer, prompt, record.target) for prompt, record in zip(prompts, records)]
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), lora_config(8, 32, 0.1, LLAMA_PROJECTIONS))
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, max_length=None, bf16=False,
                       dataloader_pin_memory=False,
                       report_to="none", train_sampling_strategy="sequential"),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    for row, (input_ids, labels, prompt) in enumerate(zip(batch["input_ids"], batch["labels"], prompts)):
        prompt_length = len(encode_prompt(tokenizer, prompt))
        length = len(rows[row]["input_ids"])
        assert (labels[:prompt_length] == -100).all()
        assert (labels[length:] == -100).all(), "padding must not be trained on"
        answer = labels[prompt_length:length]
        assert (answer == input_ids[prompt_length:length]).all() and answer[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(answer[:-1]) == " " + records[row].target


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
    with open(os.path.join(output_dir, "run_config.json")) as handle:
        assert json.load(handle)["learning_rate"] == 1e-2
    # LoRA's B matrices start at zero: training must have moved them.
    trained = lora_b_weights(output_dir)
    assert trained and all(tensor.abs().sum() > 0 for tensor in trained.values())

    resumed_dir = str(tmp_path / "resumed")
    sft(output_dir=resumed_dir, max_steps=1, resume_from_checkpoint=output_dir, **common)
    resumed = lora_b_weights(resumed_dir)
    assert resumed.keys() == trained.keys()
    assert any(not torch.equal(resumed[name], trained[name]) for name in trained)
