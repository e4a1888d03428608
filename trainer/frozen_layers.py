"""LoRA in the top layers only, and the frozen layers below computed once per example.

With `--lora_top_layers N` only the top N decoder layers of a LLaMA-architecture model carry LoRA.
The layers below have no trainable weight, so the backward pass stops at the first LoRA layer and
the output of the frozen layers for an example never changes during training. With
`--cache_frozen_layers True`, SFT computes that output (the hidden states entering the first LoRA
layer) once per example, without gradients, and every forward after that (each epoch, each
validation pass) runs only the top N layers from it: the same losses and gradients as the full
forward (tests check this), for the frozen layers' forward paid once instead of once per pass.
The cache holds tokens x hidden size numbers per example in the model's dtype (about 0.44 MB
per LastFM prompt for the embedded model in fp32), in the host's memory.

The layers run are chosen by swapping the decoder's layer list for a slice of it for the length of
one forward, so the model's own forward (masks, rotary positions, LoRA, quantized layers) does the
work in both parts.
"""

import contextlib

import torch
from torch import nn
from tqdm.auto import tqdm

from trainer.cli import is_main_process
from trainer.errors import InputError
from trainer.logprobs import completion_logps, pad_left


def decoder(model) -> nn.Module:
    """The decoder stack (embeddings, `layers`, final `norm`) of a causal LM, PEFT-wrapped or not."""
    model = getattr(model, "module", model)  # DistributedDataParallel
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    stack = getattr(base, "model", None)
    if stack is None or not isinstance(getattr(stack, "layers", None), nn.ModuleList) or not hasattr(stack, "norm"):
        raise InputError(f"{type(base).__name__} has no decoder with `layers` and `norm`: top-layer LoRA and "
                         "frozen-layer caching need a LLaMA-architecture model")
    return stack


def first_trainable_layer(model) -> int:
    """The lowest decoder layer holding a trainable weight. Nothing below it may train (embeddings
    included), or the hidden states entering it would change during training."""
    stack = decoder(model)
    if any(parameter.requires_grad for parameter in stack.embed_tokens.parameters()):
        raise ValueError("the input embeddings train: the frozen layers' outputs cannot be cached")
    for index, layer in enumerate(stack.layers):
        if any(parameter.requires_grad for parameter in layer.parameters()):
            return index
    raise ValueError("no decoder layer has a trainable weight: nothing to train above a frozen cache")


def top_lora_layers(model, top_layers: int) -> list[int]:
    """Indices of the model's top `top_layers` decoder layers (PEFT's layers_to_transform)."""
    num_layers = len(decoder(model).layers)
    if not 1 <= top_layers <= num_layers:
        raise InputError(f"--lora_top_layers must be 1 to {num_layers} (the model's decoder layers), got {top_layers}")
    return list(range(num_layers - top_layers, num_layers))


@contextlib.contextmanager
def running_layers(model, start: int, stop: int | None = None, final_norm: bool = True):
    """For the duration, the model's forward runs decoder layers start..stop-1 only (and the final
    norm only when `final_norm`); inputs then enter as `inputs_embeds`, the hidden states at `start`."""
    stack = decoder(model)
    layers, norm = stack.layers, stack.norm
    stack.layers = nn.ModuleList(list(layers)[start:stop])
    if not final_norm:
        stack.norm = nn.Identity()
    try:
        yield
    finally:
        stack.layers, stack.norm = layers, norm


@torch.no_grad()
def frozen_hidden_states(model, sequences: list[list[int]], first_trainable_layer: int, pad_token_id: int,
                         batch_size: int = 8) -> list[torch.Tensor]:
    """The hidden states entering layer `first_trainable_layer`, [len(sequence), hidden] per sequence,
    computed in batches of similar length with positions counted from each sequence's first token."""
    device = next(model.parameters()).device
    order = sorted(range(len(sequences)), key=lambda index: len(sequences[index]))
    states: list[torch.Tensor | None] = [None] * len(sequences)
    for start in tqdm(range(0, len(order), batch_size), desc="frozen layers, once",
                      disable=not is_main_process()):
        batch = order[start : start + batch_size]
        input_ids = pad_left([sequences[index] for index in batch], pad_token_id).to(device)
        attention_mask = pad_left([[1] * len(sequences[index]) for index in batch], 0).to(device)
        position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
        with running_layers(model, 0, first_trainable_layer, final_norm=False):
            hidden = decoder(model)(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                    use_cache=False).last_hidden_state
        for row, index in enumerate(batch):
            states[index] = hidden[row, hidden.shape[1] - len(sequences[index]):].cpu()
    return states


def pad_hidden_left(states: list[torch.Tensor]) -> torch.Tensor:
    """[B, L, hidden]: each [length, hidden] tensor right-aligned behind zeros (padding, masked out)."""
    length = max(state.shape[0] for state in states)
    batch = states[0].new_zeros(len(states), length, states[0].shape[1])
    for row, state in enumerate(states):
        batch[row, length - state.shape[0]:] = state
    return batch


def completion_logps_from_frozen(model, hidden_states: torch.Tensor, first_layer: int, input_ids: torch.Tensor,
                                 attention_mask: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """trainer.logprobs.completion_logps, the forward starting at layer `first_layer` from the cached
    hidden states entering it ([N, L, hidden], aligned with input_ids)."""
    with running_layers(model, first_layer):
        return completion_logps(model, input_ids, attention_mask, completion_mask, inputs_embeds=hidden_states)
