"""LoRA in the top layers and the frozen layers' cache on a tiny random LLaMA: the cached forward
equals the full one in losses and LoRA gradients, and SFT trains the same with and without it."""

import json

import pytest
import torch
from conftest import make_record
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from sft import sft
from trainer.data import parse_record
from trainer.errors import InputError
from trainer.frozen_layers import (completion_logps_from_frozen, first_trainable_layer, frozen_hidden_states,
                                   pad_hidden_left, top_lora_layers)
from trainer.logprobs import completion_logps
from trainer.modeling import LLAMA_PROJECTIONS
from trainer.prompts import PromptBuilder, supervised_example
from trainer.sft_trainer import AnswerCollator, IGNORED_LABEL


def top_lora_model(model_dir, top_layers: int):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=list(LLAMA_PROJECTIONS), init_lora_weights=False,
                        layers_to_transform=top_lora_layers(model, top_layers), layers_pattern="layers",
                        task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def supervised_rows(tokenizer, count: int) -> list[dict]:
    builder = PromptBuilder("music", seed=0)
    records = [parse_record(make_record(index), "made-up", index) for index in range(count)]
    # Prompts of uneven lengths, so batches are padded.
    return [supervised_example(tokenizer, builder.build(record, index)[: 60 + 23 * index], record.target)
            for index, record in enumerate(records)]


def test_cached_forward_equals_the_full_one_in_values_and_lora_gradients(tiny_model_dir, tokenizer):
    model = top_lora_model(tiny_model_dir, top_layers=1)
    assert first_trainable_layer(model) == 1
    rows = supervised_rows(tokenizer, 3)
    batch = AnswerCollator(tokenizer.pad_token_id)(rows)
    answer_mask = batch["labels"] != IGNORED_LABEL
    full = completion_logps(model, batch["input_ids"], batch["attention_mask"], answer_mask)
    full.sum().backward()
    full_gradients = {name: parameter.grad.clone() for name, parameter in model.named_parameters()
                      if parameter.requires_grad}
    model.zero_grad()

    # Cached one example at a time (batch of 1): no padding, unlike the padded training batch.
    cache = frozen_hidden_states(model, [row["input_ids"] for row in rows], 1, tokenizer.pad_token_id, batch_size=1)
    assert [state.shape for state in cache] == [(len(row["input_ids"]), 32) for row in rows]
    hidden = pad_hidden_left(cache)
    cached = completion_logps_from_frozen(model, hidden, 1, batch["input_ids"], batch["attention_mask"], answer_mask)
    cached.sum().backward()
    torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-5)
    for name, gradient in full_gradients.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, gradient, rtol=1e-4, atol=1e-6)
    assert len(model.get_base_model().model.layers) == 2, "the layer list is restored after each forward"


def test_only_a_cacheable_model_passes_the_check(tiny_model_dir):
    everywhere = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                LoraConfig(r=4, target_modules=list(LLAMA_PROJECTIONS), task_type="CAUSAL_LM"))
    assert first_trainable_layer(everywhere) == 0
    frozen = AutoModelForCausalLM.from_pretrained(tiny_model_dir).requires_grad_(False)
    with pytest.raises(ValueError, match="no decoder layer has a trainable weight"):
        first_trainable_layer(frozen)
    with pytest.raises(InputError, match=r"--lora_top_layers must be 1 to 2 .* got 3"):
        top_lora_layers(frozen, 3)


def test_sft_with_the_cache_trains_as_sft_without_it(tiny_model_dir, small_data_dir, tmp_path):
    common = dict(model_name=tiny_model_dir, train_file=f"{small_data_dir}/train.json",
                  valid_file=f"{small_data_dir}/valid.json", max_steps=3, batch_size=4, learning_rate=1e-2,
                  warmup_ratio=0.0, logging_steps=1, lora_top_layers=1, seed=3, lora_dropout=0.0)
    sft(output_dir=str(tmp_path / "full"), **common)
    sft(output_dir=str(tmp_path / "cached"), cache_frozen_layers=True, **common)

    def losses(folder):
        history = json.loads((tmp_path / folder / "trainer_state.json").read_text())["log_history"]
        return [entry["loss"] for entry in history if "loss" in entry]

    assert len(losses("full")) == 3
    assert losses("cached") == pytest.approx(losses("full"), rel=1e-4)
    results = [json.loads((tmp_path / folder / "train_results.json").read_text()) for folder in ("full", "cached")]
    assert results[1]["eval_loss"] == pytest.approx(results[0]["eval_loss"], rel=1e-4)
    weights = load_file(tmp_path / "cached" / "adapter_model.safetensors")
    assert weights and all(".layers.1." in name for name in weights), "LoRA only in the top layer"

    with pytest.raises(InputError, match="--cache_frozen_layers: the lowest layer trains.*--lora_top_layers"):
        sft(output_dir=str(tmp_path / "refused"), **(common | {"lora_top_layers": None, "cache_frozen_layers": True}))
    assert not (tmp_path / "refused").exists()
