"""Preference losses over one chosen and k rejected completions per prompt, as pure tensor functions.

Notation (per prompt): the implicit reward of a completion y is
    r(y) = log pi(y | x) - log pi_ref(y | x),
the log-probability ratio of the policy to the frozen reference, summed over the completion's tokens.
y_w is the chosen (true) title, y_1..y_k the rejected ones, beta the inverse temperature.

Every function takes
    chosen_logps:         [B]     log pi(y_w | x)
    rejected_logps:       [B, k]  log pi(y_j | x)
    ref_chosen_logps:     [B]     log pi_ref(y_w | x)
    ref_rejected_logps:   [B, k]  log pi_ref(y_j | x)
and returns the per-prompt loss, shape [B]. They are written with logsigmoid and logsumexp so that
they stay finite for any margin in fp32 and bf16. A loss that needs no reference ignores the two
reference arguments, and the trainer then skips the reference pass (LOSSES: needs_reference).

LOSSES is the one list of the losses: the flag's choices, its help and the trainer read it.
"""

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F


def rewards(logps: torch.Tensor, ref_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """beta * r(y) = beta * (log pi(y|x) - log pi_ref(y|x)), elementwise, any shape."""
    return beta * (logps - ref_logps)


def sdpo_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta: float) -> torch.Tensor:
    """S-DPO (Chen et al. 2024, "On Softmax Direct Preference Optimization for Recommendation", eq. 11):

        L = -log sigmoid( -log sum_{j=1..k} exp( beta * (r(y_j) - r(y_w)) ) )

    With k = 1 the sum has one term and L = -log sigmoid(beta * (r(y_w) - r(y_1))), which is DPO.
    """
    chosen = rewards(chosen_logps, ref_chosen_logps, beta)  # [B]
    rejected = rewards(rejected_logps, ref_rejected_logps, beta)  # [B, k]
    return -F.logsigmoid(-torch.logsumexp(rejected - chosen.unsqueeze(-1), dim=-1))


def dpo_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta: float) -> torch.Tensor:
    """DPO (Rafailov et al. 2023, eq. 7), for each rejected completion, averaged over the k of them:

        L = (1/k) sum_{j=1..k} -log sigmoid( beta * (r(y_w) - r(y_j)) )

    With k = 1 it is exactly the pairwise DPO loss.
    """
    chosen = rewards(chosen_logps, ref_chosen_logps, beta)  # [B]
    rejected = rewards(rejected_logps, ref_rejected_logps, beta)  # [B, k]
    return -F.logsigmoid(chosen.unsqueeze(-1) - rejected).mean(dim=-1)


def dmpo_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta: float) -> torch.Tensor:
    """DMPO (Bai et al. 2024, "Finetuning LLM-based recommender systems with multiple negatives"):

        L = -log sigmoid( beta * r(y_w) - (1/k) sum_{j=1..k} beta * r(y_j) )

    Each rejected reward keeps its own reference term log pi_ref(y_j | x).
    """
    chosen = rewards(chosen_logps, ref_chosen_logps, beta)  # [B]
    rejected = rewards(rejected_logps, ref_rejected_logps, beta)  # [B, k]
    return -F.logsigmoid(chosen - rejected.mean(dim=-1))


def mppo_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta: float) -> torch.Tensor:
    """MPPO (Xie et al. 2024, "MPPO: Multi Pair-wise Preference Optimization for LLMs with Arbitrary
    Negative Samples"), without a reference model, on the policy's probabilities, as DynamicPO's public
    implementation (the only one) computes it, with the sequence probability pi(y | x):

        L = -log sigmoid( beta * sum_{j=1..k} ( pi(y_w | x) - pi(y_j | x) ) )

    The argument lies in [-beta k, beta k], so L is finite for any log-probabilities (a log-probability
    above 0, a rounding error, counts as 0). Its gradient with respect to log pi(y | x) is proportional
    to pi(y | x) itself: a title the model finds unlikely moves little. The reference arguments are ignored.
    """
    chosen = chosen_logps.clamp(max=0).exp()  # [B]
    rejected = rejected_logps.clamp(max=0).exp()  # [B, k]
    return -F.logsigmoid(beta * (chosen.unsqueeze(-1) - rejected).sum(dim=-1))


@dataclasses.dataclass(frozen=True)
class Loss:
    """One entry of LOSSES: the pure function, the words --help gives it, and whether it reads the frozen
    reference's log-probabilities (False: the trainer skips the reference pass). Each takes any k >= 1."""

    function: Callable[..., torch.Tensor]
    summary: str
    needs_reference: bool = True


LOSSES = {
    "sdpo": Loss(sdpo_loss, "softmax DPO over the k rejected titles, the S-DPO paper's"),
    "dpo": Loss(dpo_loss, "pairwise DPO, averaged over the k rejected titles"),
    "dmpo": Loss(dmpo_loss, "DMPO: the chosen reward against the mean rejected reward"),
    "mppo": Loss(mppo_loss, "MPPO: no reference model, on the policy's probabilities", needs_reference=False),
}
LOSS_TYPES = tuple(LOSSES)


def loss_choices() -> str:
    """The losses as --help lists them: `name (summary)`, in registry order."""
    return "; ".join(f"{name} ({loss.summary})" for name, loss in LOSSES.items())


def preference_loss(loss_type: str, chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps,
                    beta: float) -> torch.Tensor:
    """The per-prompt loss [B] of `loss_type` (one of LOSS_TYPES)."""
    if loss_type not in LOSSES:
        raise ValueError(f"unknown loss type {loss_type!r}; choose one of {LOSS_TYPES}")
    if rejected_logps.dim() != 2 or rejected_logps.shape != ref_rejected_logps.shape:
        raise ValueError(f"rejected log-probs must be [B, k], got {tuple(rejected_logps.shape)} "
                         f"and {tuple(ref_rejected_logps.shape)}")
    return LOSSES[loss_type].function(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)

