"""Fixtures: the shared data location, the embedded model and tokenizer, a tiny random LLaMA."""

import json
import os

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from trainer.modeling import EMBEDDED_MODEL_NAME, LLAMA_PROJECTIONS, load_tokenizer, resolve_model_path

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA_VARIABLE = "SHARED_DATA_DIR"


SHARED_DATA_BESIDE = os.path.join(os.path.dirname(REPO_ROOT), "shared", "data")
LASTFM_SOURCE = os.path.join(REPO_ROOT, "data", "lastfm-source")


def checkout_environment() -> dict[str, str]:
    """The environment for a script run from this checkout: its own packages come first, so a copy of the
    repository (mutmut's mutants/, a clone beside the installed one) runs its own code, not the installed."""
    search_path = os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get("PYTHONPATH")]))
    return os.environ | {"PYTHONPATH": search_path}


@pytest.fixture(scope="session")
def shared_data_dir() -> str:
    """The shared data folder (the authors' pickles, their golden file, the HetRec log), which a clone does
    not hold: SHARED_DATA_DIR where set (.ci/run sets it), and then missing data fails, never skips;
    otherwise ../shared/data beside the repository, and the tests that need it are skipped where it is not."""
    path = os.environ.get(SHARED_DATA_VARIABLE)
    if path is None:
        if not os.path.isdir(SHARED_DATA_BESIDE):
            pytest.skip(f"needs the shared data: no {SHARED_DATA_BESIDE}, and {SHARED_DATA_VARIABLE} is not set")
        path = SHARED_DATA_BESIDE
    if not os.path.isdir(os.path.join(path, "lastfm")):
        pytest.fail(f"{SHARED_DATA_VARIABLE}={path!r}: not the shared data folder (no lastfm/ in it)")
    return path


@pytest.fixture(scope="session")
def lastfm_source() -> str:
    """The LastFM split the S-DPO paper used, as the repository ships it (data/lastfm-source, text)."""
    return LASTFM_SOURCE


@pytest.fixture(scope="session")
def embedded_model_path() -> str:
    """The embedded SmolLM2 converted to safetensors (once per machine, cached)."""
    return resolve_model_path(EMBEDDED_MODEL_NAME)


@pytest.fixture(scope="session")
def tokenizer(embedded_model_path):
    return load_tokenizer(embedded_model_path, padding_side="right")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, embedded_model_path, tokenizer) -> str:
    """A 2-layer random LLaMA with the embedded tokenizer, saved as a model folder."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    folder = str(tmp_path_factory.mktemp("tiny-llama"))
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_records(path, records) -> str:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(records, handle)
    return str(path)


def make_record(index: int, num_candidates: int = 20) -> dict:
    """A valid record with distinct made-up titles; the true item sits at a varying position."""
    candidates = [f"Band {index}-{position}" for position in range(num_candidates)]
    return {
        "historyList": "::".join(f"Old Band {index}-{position}" for position in range(5)),
        "itemList": candidates,
        "trueSelection": candidates[index % num_candidates],
    }


@pytest.fixture
def small_data_dir(tmp_path) -> str:
    """train/valid/test JSON files of a few made-up records."""
    for split, count in (("train", 12), ("valid", 4), ("test", 5)):
        write_records(tmp_path / f"{split}.json", [make_record(index) for index in range(count)])
    return str(tmp_path)


def lora_model(model_dir: str, seed: int = 0):
    """A LoRA model whose adapter is not zero, so it differs from the base model from the start."""
    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=list(LLAMA_PROJECTIONS), init_lora_weights=False,
                        task_type="CAUSAL_LM")
    return get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), config)
