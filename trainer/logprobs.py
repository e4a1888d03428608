"""Per-completion log-probabilities, the scores preference training compares.

Two ways compute the same numbers. The plain way (completion_logps): one left-padded row per
prompt + completion, so a prompt is recomputed for each of its 1 + k completions. The packed way
(pack_example, collate_packed, packed_completion_logps): one row per prompt holding the prompt
once and then every completion, each completion attending only to the prompt and to itself, with
positions restarting after the prompt, so every completion sees exactly what it would see alone.
Either way the sum of log pi(token | prefix) over a completion's tokens is its log-probability.
"""

import torch
from torch.nn.attention.flex_attention import create_block_mask

PROMPT, PADDING = -1, -2  # segment ids of prompt and padding tokens; completion j's tokens have segment j


def pad_left(sequences: list[list[int]], pad_value: int) -> torch.Tensor:
    """[N, L] tensor of the sequences, each right-aligned behind `pad_value`."""
    length = max(len(sequence) for sequence in sequences)
    return torch.tensor([[pad_value] * (length - len(sequence)) + sequence for sequence in sequences])


def completion_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     completion_mask: torch.Tensor, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """Summed log-probability of each row's completion tokens.

    Args:
        input_ids, attention_mask, completion_mask: [N, L]; completion_mask is 1 on the tokens to score.
        inputs_embeds: [N, L, hidden], fed to the model in place of input_ids (which still give the
            targets): e.g. cached hidden states of frozen layers (trainer.frozen_layers).
    Returns:
        [N] float32 log pi(completion | prompt).

    The vocabulary head runs only from the first completion position of the batch onwards (with left
    padding that is the last few positions), so the [N, L, V] logits are never built.
    """
    if not completion_mask.any(dim=1).all():
        raise ValueError("every row needs at least one completion token")
    length = input_ids.shape[1]
    first_completion = int(completion_mask.int().argmax(dim=1).min())
    if first_completion == 0:
        raise ValueError("a completion cannot start at position 0: nothing precedes its first token")
    # Positions count real tokens only, so a left-padded row sees the positions an unpadded one would.
    position_ids = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
    # Logits at position t predict token t + 1: keep positions first_completion - 1 .. length - 2.
    kept = length - first_completion + 1
    inputs = {"input_ids": input_ids} if inputs_embeds is None else {"inputs_embeds": inputs_embeds}
    logits = model(**inputs, attention_mask=attention_mask, position_ids=position_ids,
                   logits_to_keep=kept, use_cache=False).logits[:, :-1].float()
    targets = input_ids[:, first_completion:]
    token_logps = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(dim=-1)
    return (token_logps * completion_mask[:, first_completion:]).sum(dim=1)


def pack_example(prompt: list[int], completions: list[list[int]]) -> dict:
    """One prompt followed by all its completions, as one sequence (see packed_completion_logps).

    Returns token ids, a segment id per token (PROMPT, or j for completion j), position ids that
    restart right after the prompt for every completion, and for every completion token the
    position whose logits predict it: the prompt's last token for a completion's first token,
    the completion's previous token otherwise.
    """
    if not prompt or not all(completions):
        raise ValueError("packing needs a non-empty prompt and non-empty completions")
    tokens, segments, positions = list(prompt), [PROMPT] * len(prompt), list(range(len(prompt)))
    predictors, targets, owners = [], [], []
    for index, completion in enumerate(completions):
        start = len(tokens)
        tokens += completion
        segments += [index] * len(completion)
        positions += range(len(prompt), len(prompt) + len(completion))
        predictors += [len(prompt) - 1] + list(range(start, start + len(completion) - 1))
        targets += completion
        owners += [index] * len(completion)
    return {"input_ids": tokens, "segments": segments, "position_ids": positions, "predictors": predictors,
            "targets": targets, "owners": owners}


def collate_packed(packed: list[dict], pad_token_id: int, align_prompts: bool = False) -> dict[str, torch.Tensor]:
    """Pads packed sequences into a batch and builds the attention pattern.

    Rows are left-padded, so every row ends at the last position and the vocabulary head runs on
    the fewest positions. With `align_prompts`, every prompt ends at the same position instead
    (padding before the prompt, and after the completions): the prompts' keys and values then form
    the cache of a left-padded batch of the prompts alone, which generation can start from.

    segments [B, S]: PROMPT on prompt tokens, j on completion j's tokens, PADDING on padding; the
    attention pattern is built from them where the batch lives (packed_attention), so no [B, S, S]
    mask is made on the host or copied to a GPU. predictors/targets/owners are [B, T] over completion
    tokens, padded with owner -1.
    """
    prompt_lengths = [example["segments"].count(PROMPT) for example in packed]
    if align_prompts:
        before = [max(prompt_lengths) - prompt_length for prompt_length in prompt_lengths]
    else:
        longest = max(len(example["input_ids"]) for example in packed)
        before = [longest - len(example["input_ids"]) for example in packed]
    length = max(pad + len(example["input_ids"]) for pad, example in zip(before, packed))
    after = [length - pad - len(example["input_ids"]) for pad, example in zip(before, packed)]
    width = max(len(example["targets"]) for example in packed)

    def padded(values: list[int], pad: int, tail: int, fill: int) -> list[int]:
        return [fill] * pad + values + [fill] * tail

    input_ids = torch.tensor([padded(example["input_ids"], pad, tail, pad_token_id)
                              for pad, tail, example in zip(before, after, packed)])
    segments = torch.tensor([padded(example["segments"], pad, tail, PADDING)
                             for pad, tail, example in zip(before, after, packed)])
    position_ids = torch.tensor([padded(example["position_ids"], pad, tail, 0)
                                 for pad, tail, example in zip(before, after, packed)])
    predictors = torch.tensor([[pad + predictor for predictor in example["predictors"]]
                               + [length - 1] * (width - len(example["predictors"]))
                               for pad, example in zip(before, packed)])
    targets = torch.tensor([example["targets"] + [pad_token_id] * (width - len(example["targets"]))
                            for example in packed])
    owners = torch.tensor([example["owners"] + [-1] * (width - len(example["owners"])) for example in packed])
    return {"input_ids": input_ids, "segments": segments, "position_ids": position_ids,
            "predictors": predictors, "targets": targets, "owners": owners}


def _may_attend(segments: torch.Tensor, batch, query, key) -> torch.Tensor:
    """True where query token `query` of row `batch` may attend key token `key` (index tensors that broadcast).

    A prompt token sees the prompt up to itself; a completion token sees the whole prompt and its own
    completion up to itself, never another completion; a padding token sees only itself (a row with
    nothing to attend to would turn softmax into NaN).
    """
    query_segment, key_segment = segments[batch, query], segments[batch, key]
    sees_prompt = (key_segment == PROMPT) & (query_segment != PADDING)
    sees_own_completion = (key_segment == query_segment) & (query_segment >= 0)
    return ((key <= query) & (sees_prompt | sees_own_completion)) | ((key == query) & (query_segment == PADDING))


def packed_attention(segments: torch.Tensor) -> torch.Tensor:
    """[B, S, S] bool, True where query token q may attend key token k (see _may_attend), built on segments' device."""
    rows, length = segments.shape
    positions = torch.arange(length, device=segments.device)
    batch = torch.arange(rows, device=segments.device)[:, None, None]
    return _may_attend(segments, batch, positions[None, :, None], positions[None, None, :])


def packed_attention_mask(model, segments: torch.Tensor):
    """The packed pattern in the form the model's attention reads.

    sdpa: a [B, 1, S, S] bool mask; eager: the same as an additive float mask (a bool mask would be
    added as 0/1); flex_attention: a BlockMask, which computes the pattern block by block from the
    segments and skips blocks nobody attends to, so no dense mask exists.
    """
    config = getattr(model, "module", model).config
    implementation = getattr(config, "_attn_implementation", None) or "eager"
    if implementation == "sdpa":
        return packed_attention(segments)[:, None]
    if implementation == "eager":
        return torch.zeros(segments.shape + segments.shape[-1:], dtype=torch.float32, device=segments.device
                           ).masked_fill(~packed_attention(segments), torch.finfo(torch.float32).min)[:, None]
    if implementation == "flex_attention":
        def mask_mod(batch, head, query, key):
            return _may_attend(segments, batch, query, key)

        rows, length = segments.shape
        return create_block_mask(mask_mod, rows, None, length, length, device=segments.device)
    raise ValueError(f"the packed forward needs sdpa, eager or flex_attention, not {implementation!r}")


def first_predicting_position(batch: dict[str, torch.Tensor]) -> int:
    """The earliest position of a collate_packed batch whose logits predict a completion token, from its shape.

    Either way collate_packed lays rows out, the row with the most completion tokens (the width T of
    `targets`) has its last prompt token T positions before the end: its rows are left-padded, so every
    row ends at the last position, or aligned, so every prompt ends where the longest completions begin.
    Read from the shapes, not from `predictors`: reading a value off a GPU would make the host wait for
    the device on every forward pass.
    """
    return batch["input_ids"].shape[1] - 1 - batch["targets"].shape[1]


def completion_token_counts(owners: torch.Tensor, num_completions: int) -> torch.Tensor:
    """[B, num_completions] tokens of each completion of a packed batch, from its `owners` ([B, T], -1 on padding)."""
    counts = torch.zeros(owners.shape[0], num_completions, dtype=torch.long, device=owners.device)
    return counts.scatter_add(1, owners.clamp(min=0), (owners >= 0).long())


def packed_completion_logps(model, batch: dict[str, torch.Tensor], num_completions: int, cache=None) -> torch.Tensor:
    """log pi(completion j | prompt) for every prompt of a packed batch (collate_packed), as [B, num_completions].

    Each prompt is computed once for all its completions. The vocabulary head runs only from the
    first position that predicts a completion token onwards. An empty transformers Cache passed as
    `cache` is filled with the batch's keys and values.
    """
    input_ids, predictors = batch["input_ids"], batch["predictors"]
    valid = batch["owners"] >= 0
    first_predictor = first_predicting_position(batch)
    kept = input_ids.shape[1] - first_predictor
    logits = model(input_ids=input_ids, attention_mask=packed_attention_mask(model, batch["segments"]),
                   position_ids=batch["position_ids"], logits_to_keep=kept, past_key_values=cache,
                   use_cache=cache is not None).logits.float()
    rows = predictors - first_predictor  # [B, T] positions within the kept logits
    vocabulary = logits.shape[-1]
    chosen_logits = logits.flatten(1).gather(1, rows * vocabulary + batch["targets"])  # [B, T]
    token_logps = (chosen_logits - logits.logsumexp(dim=-1).gather(1, rows)).masked_fill(~valid, 0.0)
    sums = torch.zeros(input_ids.shape[0], num_completions, dtype=token_logps.dtype, device=token_logps.device)
    return sums.scatter_add(1, batch["owners"].clamp(min=0), token_logps)
