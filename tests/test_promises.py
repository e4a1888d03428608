"""Promises of README.md and docs/stages.md that no other test held (issue 31): each test names the break it catches."""

import json

import bitsandbytes
import pytest
import torch
from conftest import lora_model
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from inference import inference
from sft import sft
from softmax_dpo import softmax_dpo
from trainer import preference_stage
from trainer.modeling import LLAMA_PROJECTIONS
from trainer.training import GuardedTraining


def test_sft_goes_on_from_the_adapter_it_is_given(tiny_model_dir, small_data_dir, tmp_path):
    """Break caught: sft.py ignoring --adapter and training a fresh one (the old test only checked that the
    weights moved)."""
    start = tmp_path / "start"
    lora_model(tiny_model_dir).save_pretrained(start)
    sft(model_name=tiny_model_dir, train_file=f"{small_data_dir}/train.json", max_valid_samples=0, max_steps=1,
        adapter=str(start), output_dir=str(tmp_path / "sft"), learning_rate=1e-9, warmup_ratio=0.0, batch_size=4)
    given, trained = load_file(start / "adapter_model.safetensors"), load_file(tmp_path / "sft" / "adapter_model.safetensors")
    assert given.keys() == trained.keys()
    for name in given:  # one step at 1e-9 moves nothing visible: the run started from the given weights
        torch.testing.assert_close(trained[name], given[name], atol=1e-6, rtol=0)
    assert any(tensor.abs().sum() > 0 for name, tensor in given.items() if "lora_B" in name)


def test_the_preference_stage_trains_with_dropout_off(tiny_model_dir, small_data_dir, tmp_path, monkeypatch):
    """docs/stages.md: LoRA dropout is off while a preference stage trains (a dropout mask on the policy but not on
    the reference would bias every reward). Break caught: DPOConfig's disable_dropout turned off."""
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.5, target_modules=list(LLAMA_PROJECTIONS),
                        init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), config).save_pretrained(tmp_path / "sft")
    rates = []
    training_step = GuardedTraining.training_step

    def recorded_training_step(self, model, *args, **kwargs):
        rates.extend(module.p for module in model.modules() if isinstance(module, torch.nn.Dropout))
        return training_step(self, model, *args, **kwargs)

    monkeypatch.setattr(GuardedTraining, "training_step", recorded_training_step)
    softmax_dpo(model_name=tiny_model_dir, adapter=str(tmp_path / "sft"), train_file=f"{small_data_dir}/train.json",
                max_valid_samples=0, output_dir=str(tmp_path / "sdpo"), max_steps=1, batch_size=2,
                gradient_accumulation_steps=1)
    assert rates and set(rates) == {0.0}


def test_qlora_loads_the_base_model_in_4bit(tokenizer, small_data_dir, tmp_path, monkeypatch):
    """Break caught: --load_in_4bit ignored when loading (the old test only checked that training ran)."""
    torch.manual_seed(0)  # bitsandbytes' CPU kernels need layers at least one quantization block (64) wide
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "tiny-64")
    tokenizer.save_pretrained(tmp_path / "tiny-64")
    loaded = []
    load = preference_stage.load_model_for_training
    monkeypatch.setattr(preference_stage, "load_model_for_training",
                        lambda *args, **kwargs: loaded.append(load(*args, **kwargs)) or loaded[-1])
    softmax_dpo(model_name=str(tmp_path / "tiny-64"), train_file=f"{small_data_dir}/train.json", max_valid_samples=0,
                output_dir=str(tmp_path / "qlora"), load_in_4bit=True, neg_num=2, max_steps=1, batch_size=2,
                gradient_accumulation_steps=1)
    quantized = [module for module in loaded[0].modules() if isinstance(module, bitsandbytes.nn.Linear4bit)]
    assert len(quantized) == len(LLAMA_PROJECTIONS)  # every projection of the one layer


def write_trained_with_hints(folder, tiny_model_dir):
    lora_model(tiny_model_dir).save_pretrained(folder)
    (folder / "run_config.json").write_text(json.dumps({"hint_file": "data/lastfm/train.json", "hint_size": 3,
                                                        "hint_recency": 0.5}))


@pytest.mark.parametrize("stage", ["inference", "preference"])
def test_a_stage_warns_when_its_hints_differ_from_the_adapters(tiny_model_dir, small_data_dir, tmp_path, caplog,
                                                              stage):
    """Break caught: either call site of hint_difference removed (only the comparison itself was tested)."""
    adapter = tmp_path / "sft"
    write_trained_with_hints(adapter, tiny_model_dir)
    with caplog.at_level("WARNING"):
        if stage == "inference":
            inference(model_name=tiny_model_dir, adapter=str(adapter), test_file=f"{small_data_dir}/test.json",
                      output_dir=str(tmp_path / "eval"), max_samples=1, max_new_tokens=1)
        else:
            softmax_dpo(model_name=tiny_model_dir, adapter=str(adapter), train_file=f"{small_data_dir}/train.json",
                        max_valid_samples=0, output_dir=str(tmp_path / "sdpo"), max_steps=1, batch_size=2,
                        gradient_accumulation_steps=1)
    assert (f"{adapter} was trained with hints (hint_size 3, hint_recency 0.5); this run's prompts are built "
            "without hints") in caplog.text
