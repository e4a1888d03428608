"""Per-completion log-probabilities: the one function preference training scores completions with.

A batch row is prompt + completion, left-padded, with a completion mask marking the completion's
tokens. The sum of log pi(token | prefix) over those tokens is the completion's log-probability.
"""

import torch


def pad_left(sequences: list[list[int]], pad_value: int) -> torch.Tensor:
    """[N, L] tensor of the sequences, each right-aligned behind `pad_value`."""
    length = max(len(sequence) for sequence in sequences)
    return torch.tensor([[pad_value] * (length - len(sequence)) + sequence for sequence in sequences])


def completion_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     completion_mask: torch.Tensor) -> torch.Tensor:
    """Summed log-probability of each row's completion tokens.

    Args:
        input_ids, attention_mask, completion_mask: [N, L]; completion_mask is 1 on the tokens to score.
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
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   logits_to_keep=kept, use_cache=False).logits[:, :-1].float()
    targets = input_ids[:, first_completion:]
    token_logps = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(dim=-1)
    return (token_logps * completion_mask[:, first_completion:]).sum(dim=1)
