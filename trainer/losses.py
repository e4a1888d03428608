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
reference arguments, and the trainer then skips the reference pass (LOSSES: needs_reference). Some read
more: token counts (simpo_sdpo), or DynamicPO's mask of the negatives that count and a beta per negative
(dynamic_negatives computes both; sdpo, dpo, dmpo and mppo take them), or NAPO's pool of titles shared
across the batch and a margin per title (napo_shared_negatives and napo_margins compute them).

LOSSES is the one list of the losses: the flag's choices, its help and the trainer read it.
"""

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F


def rewards(logps: torch.Tensor, ref_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """beta * r(y) = beta * (log pi(y|x) - log pi_ref(y|x)), elementwise, any shape."""
    return beta * (logps - ref_logps)


def reward_gaps(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta) -> torch.Tensor:
    """[B, k] beta_j * (r(y_w) - r(y_j)): how far the chosen reward lies above each rejected one."""
    chosen = chosen_logps - ref_chosen_logps  # [B]
    rejected = rejected_logps - ref_rejected_logps  # [B, k]
    return beta * (chosen.unsqueeze(-1) - rejected)


def counted_mean(values: torch.Tensor, negative_mask: torch.Tensor | None) -> torch.Tensor:
    """[B, k] -> [B]: the mean over each row's counted negatives (all of them when the mask is None)."""
    if negative_mask is None:
        return values.mean(dim=-1)
    return values.masked_fill(~negative_mask, 0).sum(dim=-1) / negative_mask.sum(dim=-1)


def sdpo_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta,
              negative_mask=None) -> torch.Tensor:
    """S-DPO (Chen et al. 2024, "On Softmax Direct Preference Optimization for Recommendation", eq. 11):

        L = -log sigmoid( -log sum_{j=1..k} exp( beta * (r(y_j) - r(y_w)) ) )

    With k = 1 the sum has one term and L = -log sigmoid(beta * (r(y_w) - r(y_1))), which is DPO.
    """
    pairs = -reward_gaps(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)  # [B, k]
    if negative_mask is not None:
        pairs = pairs.masked_fill(~negative_mask, float("-inf"))
    return -F.logsigmoid(-torch.logsumexp(pairs, dim=-1))


def dpo_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta,
             negative_mask=None) -> torch.Tensor:
    """DPO (Rafailov et al. 2023, eq. 7), for each rejected completion, averaged over the k of them:

        L = (1/k) sum_{j=1..k} -log sigmoid( beta * (r(y_w) - r(y_j)) )

    With k = 1 it is exactly the pairwise DPO loss.
    """
    gaps = reward_gaps(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)  # [B, k]
    return counted_mean(-F.logsigmoid(gaps), negative_mask)


def dmpo_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta,
              negative_mask=None) -> torch.Tensor:
    """DMPO (Bai et al. 2024, "Finetuning LLM-based recommender systems with multiple negatives"):

        L = -log sigmoid( beta * r(y_w) - (1/k) sum_{j=1..k} beta * r(y_j) )
          = -log sigmoid( (1/k) sum_{j=1..k} beta_j * (r(y_w) - r(y_j)) )

    (the second form, equal for one beta, is how DynamicPO applies a beta per negative). Each rejected
    reward keeps its own reference term log pi_ref(y_j | x).
    """
    gaps = reward_gaps(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)  # [B, k]
    return -F.logsigmoid(counted_mean(gaps, negative_mask))


def mppo_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta,
              negative_mask=None) -> torch.Tensor:
    """MPPO (Xie et al. 2024, "MPPO: Multi Pair-wise Preference Optimization for LLMs with Arbitrary
    Negative Samples"), without a reference model, on the policy's probabilities, as DynamicPO's public
    implementation (the only one) computes it, with the sequence probability pi(y | x):

        L = -log sigmoid( sum_{j=1..k} beta_j * ( pi(y_w | x) - pi(y_j | x) ) )

    The argument lies in [-beta k, beta k], so L is finite for any log-probabilities (a log-probability
    above 0, a rounding error, counts as 0). Its gradient with respect to log pi(y | x) is proportional
    to pi(y | x) itself: a title the model finds unlikely moves little. The reference arguments are ignored.
    """
    chosen = chosen_logps.clamp(max=0).exp()  # [B]
    rejected = rejected_logps.clamp(max=0).exp()  # [B, k]
    gaps = beta * (chosen.unsqueeze(-1) - rejected)  # [B, k]
    if negative_mask is not None:
        gaps = gaps.masked_fill(~negative_mask, 0)
    return -F.logsigmoid(gaps.sum(dim=-1))


def simpo_sdpo_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta, *,
                    chosen_lengths, rejected_lengths, target_margin: float) -> torch.Tensor:
    """S-DPO's softmax over k negatives on SimPO's reward (Meng et al. 2024, "SimPO: Simple Preference
    Optimization with a Reference-Free Reward", eq. 6): no reference model; a completion's reward is its
    mean token log-probability, s(y) = log pi(y | x) / |y|, and the chosen one must win by gamma:

        L = -log sigmoid( -log sum_{j=1..k} exp( beta * (s(y_j) - s(y_w)) + gamma ) )

    With k = 1 this is SimPO, -log sigmoid(beta * (s(y_w) - s(y_1)) - gamma). Title lengths differ a lot
    (1 to 30 tokens), and a summed log-probability favours short titles; the mean does not.

    chosen_lengths [B] and rejected_lengths [B, k] count each completion's tokens; gamma is target_margin.
    The reference arguments are ignored.
    """
    chosen = beta * chosen_logps / chosen_lengths  # [B]
    rejected = beta * rejected_logps / rejected_lengths  # [B, k]
    return -F.logsigmoid(-torch.logsumexp(rejected - chosen.unsqueeze(-1) + target_margin, dim=-1))


def listwise_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta) -> torch.Tensor:
    """Plackett-Luce over a whole ranking of the 1 + k titles (the listwise model S-DPO's partial ranking
    comes from; Chen et al. 2024, section 3.2). The ranking: the chosen title first, then the rejected ones
    in the order the reference scores them, most likely first (ties keep their order in the list). With
    u_0 = beta * r(y_w) and u_1..u_k the rejected rewards in that order,

        L = -sum_{i=0..k-1} log( exp(u_i) / sum_{l=i..k} exp(u_l) )

    The first term alone is S-DPO; the others ask the policy to keep the reference's order among the
    wrong titles, which the reference (the SFT model, trained on true next items) puts nearest the user's
    taste first. With k = 1 only the first term remains: DPO. Every list needs a reference.
    """
    order = ref_rejected_logps.argsort(dim=-1, descending=True, stable=True)  # [B, k]
    rejected = rewards(rejected_logps, ref_rejected_logps, beta).gather(-1, order)  # [B, k]
    ranked = torch.cat([rewards(chosen_logps, ref_chosen_logps, beta).unsqueeze(-1), rejected], dim=-1)
    # tails[:, i] = log sum_{l >= i} exp(u_l)
    tails = ranked.flip(-1).logcumsumexp(dim=-1).flip(-1)  # [B, 1 + k]
    return (tails - ranked)[:, :-1].sum(dim=-1)


def boundary_cluster(values: torch.Tensor, clusters: int = 3, iterations: int = 20) -> torch.Tensor:
    """[B, k] -> [B, k] bool: each row's values in the highest of `clusters` one-dimensional k-means
    clusters (Lloyd's iterations from the row's minimum, median and maximum; in one dimension a cluster is
    an interval, so the highest is the one holding the row's maximum)."""
    width = values.shape[-1]
    starts = torch.linspace(0, width - 1, min(clusters, width), device=values.device).round().long()
    centers = values.sort(dim=-1).values[:, starts]  # [B, c]
    for _ in range(iterations):
        nearest = (values.unsqueeze(-1) - centers.unsqueeze(-2)).abs().argmin(dim=-1)  # [B, k]
        members = F.one_hot(nearest, centers.shape[-1]).to(values.dtype)  # [B, k, c]
        counts = members.sum(dim=-2)
        sums = (members * values.unsqueeze(-1)).sum(dim=-2)
        centers = torch.where(counts > 0, sums / counts.clamp(min=1), centers)
    nearest = (values.unsqueeze(-1) - centers.unsqueeze(-2)).abs().argmin(dim=-1)
    return nearest == nearest.gather(-1, values.argmax(dim=-1, keepdim=True))


def dynamic_negatives(chosen_logps, rejected_logps, beta: float, margin: float = 6.0
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """DynamicPO's boundary negatives and per-negative beta (Hu et al. 2025, "DynamicPO"; as the authors'
    public code computes them), from the policy's log-probabilities, without gradients.

    Boundary negatives: the rejected titles the policy scores at least as high as the chosen one; where
    none does, those in the highest of three k-means clusters of the rejected log-probs (boundary_cluster).
    The others are the discriminative ones (where none is left, the boundary ones stand in). For rejected
    title j, with d_w = log pi(y_w) - log pi(y_j) and d_b = log pi(y_j) - the discriminative titles' mean
    log pi,

        beta_j = beta * (1 + tanh( (d_w - d_b - margin) / (|d_w| + |d_b|) ) / 2),  in [beta/2, 3 beta/2],

    larger for a title near the chosen one than for one near the discriminative ones (0 / 0 gives beta/2).

    Returns (mask [B, k] bool, True on the boundary negatives; betas [B, k]).
    """
    chosen, rejected = chosen_logps.detach().unsqueeze(-1), rejected_logps.detach()
    boundary = rejected >= chosen
    boundary = torch.where(boundary.any(dim=-1, keepdim=True), boundary, boundary_cluster(rejected))
    discriminative = torch.where((~boundary).any(dim=-1, keepdim=True), ~boundary, boundary)
    discriminative_mean = counted_mean(rejected, discriminative).unsqueeze(-1)  # [B, 1]
    to_chosen = chosen - rejected
    to_discriminative = rejected - discriminative_mean
    scale = (to_chosen - to_discriminative - margin) / (to_chosen.abs() + to_discriminative.abs()
                                                        ).clamp(min=torch.finfo(rejected.dtype).tiny)
    return boundary, beta * (1 + torch.tanh(scale) / 2)


def napo_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta, *, shared_negatives,
              negative_margins) -> torch.Tensor:
    """NAPO (Ding et al. 2025, "On Negative-aware Preference Optimization for Recommendation", arXiv 2508.09653)
    as this project builds it: S-DPO over a pool that adds the rejected titles of similar prompts in the batch,
    each rejected title with its own margin. Prompt i's pool P_i holds its own k rejected titles and prompt
    l's title j wherever shared_negatives[i, l, j]; a shared title keeps the reward it got under its own
    prompt, r_l(y_lj) = log pi(y_lj | x_l) - log pi_ref(y_lj | x_l), so sharing costs no forward pass, and
    the gradient reaches prompt l's forward through it. With m_lj the margin of title j of prompt l,

        L_i = -log sigmoid( -log sum_{(l, j) in P_i} exp( beta * (r_l(y_lj) - r_i(y_iw)) + m_lj ) )

    With nothing shared and every margin 0 it is S-DPO, and with k = 1 then DPO. The paper takes its margins
    from an auxiliary model's confidence in each negative; here they come from napo_margins.

    shared_negatives: [B, B, k] bool (the diagonal is ignored: a prompt's own titles always count);
    negative_margins: [B, k], the margin travelling with each rejected title.
    """
    batch, k = rejected_logps.shape
    chosen = rewards(chosen_logps, ref_chosen_logps, beta)  # [B]
    rejected = rewards(rejected_logps, ref_rejected_logps, beta) + negative_margins  # [B, k]
    own = torch.eye(batch, dtype=torch.bool, device=rejected.device).unsqueeze(-1)  # [B, B, 1]
    pool = (own | shared_negatives).reshape(batch, batch * k)  # [B, B k]: prompt i's row lists every title
    pairs = rejected.reshape(1, batch * k) - chosen.unsqueeze(-1)  # [B, B k]
    return -F.logsigmoid(-torch.logsumexp(pairs.masked_fill(~pool, float("-inf")), dim=-1))


def napo_margins(rejected_scores: torch.Tensor, baseline: torch.Tensor | float, max_margin: float) -> torch.Tensor:
    """[B, k] -> [B, k]: NAPO's margin per rejected title, larger the surer it is a negative,

        m_j = max_margin * sigmoid(baseline - score_j),

    where score_j is how much the policy likes title j (the trainer uses its mean token log-probability)
    and the baseline a running average of those scores (the trainer's EMA over its batches). A title scored
    well below the usual negative is a confident negative and gets nearly max_margin; one scored above
    them may be a title the user would like (a false negative) and gets little, so the loss pushes it less.
    The paper reads this confidence off an auxiliary model; the policy's own scores stand in for it."""
    return max_margin * torch.sigmoid(baseline - rejected_scores.detach())


def jaccard(first: frozenset, second: frozenset) -> float:
    """|A & B| / |A | B|, 0 for two empty sets."""
    union = len(first | second)
    return len(first & second) / union if union else 0.0


def napo_shared_negatives(histories: list[list[str]], completions: list[list[list[int]]], neighbours: int
                          ) -> torch.Tensor:
    """[B, B, k] bool: which rejected titles of the batch's other prompts join each prompt's pool (napo_loss).

    Prompt i takes the rejected titles of its `neighbours` most similar prompts in the batch, similarity
    being the Jaccard overlap of the two histories' titles (ties go to the earlier prompt), the paper's
    user similarity on what every data set holds. A title is not shared to a prompt whose true title it is
    (it would be pushed down as a negative of its own user) nor when that prompt's pool already holds it.

    histories: each prompt's history titles; completions: each prompt's 1 + k completions as token ids,
    the chosen one first (titles are compared by their tokens).
    """
    batch, k = len(completions), len(completions[0]) - 1
    history_sets = [frozenset(history) for history in histories]
    shared = torch.zeros(batch, batch, k, dtype=torch.bool)
    for i in range(batch):
        others = sorted((other for other in range(batch) if other != i),
                        key=lambda other: -jaccard(history_sets[i], history_sets[other]))
        pooled = {tuple(tokens) for tokens in completions[i]}  # its true title and its own rejected ones
        for other in others[:neighbours]:
            for j, tokens in enumerate(completions[other][1:]):
                if tuple(tokens) not in pooled:
                    pooled.add(tuple(tokens))
                    shared[i, other, j] = True
    return shared


@dataclasses.dataclass(frozen=True)
class Loss:
    """One entry of LOSSES: the pure function, the words --help gives it, and what it reads besides the
    policy's log-probabilities. Each takes any k >= 1.

    needs_reference: reads the frozen reference's log-probabilities (False: the trainer skips the
        reference pass and passes zeros).
    reads_lengths: reads each completion's token count and the target margin (chosen_lengths,
        rejected_lengths, target_margin).
    takes_dynamic_negatives: accepts DynamicPO's options, a mask of the negatives that count
        (negative_mask) and a beta per negative ([B, k] in place of one number).
    shares_negatives: reads which of the batch's other rejected titles join each prompt's pool and a
        margin per rejected title (shared_negatives, negative_margins; NAPO's).
    """

    function: Callable[..., torch.Tensor]
    summary: str
    needs_reference: bool = True
    reads_lengths: bool = False
    takes_dynamic_negatives: bool = False
    shares_negatives: bool = False


LOSSES = {
    "sdpo": Loss(sdpo_loss, "softmax DPO over the k rejected titles, the S-DPO paper's",
                 takes_dynamic_negatives=True),
    "dpo": Loss(dpo_loss, "pairwise DPO, averaged over the k rejected titles", takes_dynamic_negatives=True),
    "dmpo": Loss(dmpo_loss, "DMPO: the chosen reward against the mean rejected reward", takes_dynamic_negatives=True),
    "mppo": Loss(mppo_loss, "MPPO: no reference model, on the policy's probabilities", needs_reference=False,
                 takes_dynamic_negatives=True),
    "simpo_sdpo": Loss(simpo_sdpo_loss, "S-DPO's softmax on SimPO's reward: no reference model, mean token "
                                        "log-probabilities, a target margin", needs_reference=False,
                       reads_lengths=True),
    "listwise": Loss(listwise_loss, "Plackett-Luce over the chosen title and the k rejected ones in the "
                                    "reference's order"),
    "napo": Loss(napo_loss, "NAPO: S-DPO that also takes the rejected titles of the most similar prompts in the "
                            "batch, with a margin per rejected title from a running average of their scores",
                 shares_negatives=True),
}
LOSS_TYPES = tuple(LOSSES)
LENGTH_READERS = tuple(name for name, loss in LOSSES.items() if loss.reads_lengths)
DYNAMIC_NEGATIVE_TAKERS = tuple(name for name, loss in LOSSES.items() if loss.takes_dynamic_negatives)
NEGATIVE_SHARERS = tuple(name for name, loss in LOSSES.items() if loss.shares_negatives)


def loss_choices() -> str:
    """The losses as --help lists them: `name (summary)`, in registry order."""
    return "; ".join(f"{name} ({loss.summary})" for name, loss in LOSSES.items())


def preference_loss(loss_type: str, chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps,
                    beta, *, chosen_lengths=None, rejected_lengths=None, target_margin: float = 0.0,
                    negative_mask=None, shared_negatives=None, negative_margins=None) -> torch.Tensor:
    """The per-prompt loss [B] of `loss_type` (one of LOSS_TYPES), given what that loss reads (see Loss):
    chosen_lengths [B] and rejected_lengths [B, k] token counts; negative_mask [B, k] bool and beta as a
    float or [B, k]; shared_negatives [B, B, k] bool and negative_margins [B, k]. A value the loss would
    not read is refused rather than ignored."""
    if loss_type not in LOSSES:
        raise ValueError(f"unknown loss type {loss_type!r}; choose one of {LOSS_TYPES}")
    if rejected_logps.dim() != 2 or rejected_logps.shape != ref_rejected_logps.shape:
        raise ValueError(f"rejected log-probs must be [B, k], got {tuple(rejected_logps.shape)} "
                         f"and {tuple(ref_rejected_logps.shape)}")
    loss = LOSSES[loss_type]
    arguments = (chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    dynamic = negative_mask is not None or isinstance(beta, torch.Tensor)
    if dynamic and not loss.takes_dynamic_negatives:
        raise ValueError(f"{loss_type} takes no negative mask and no beta per negative")
    sharing = shared_negatives is not None or negative_margins is not None
    if sharing != loss.shares_negatives:
        raise ValueError(f"{loss_type} reads shared_negatives and negative_margins" if loss.shares_negatives
                         else f"{loss_type} shares no negatives and reads no margin per negative")
    if sharing:
        batch, k = rejected_logps.shape
        if shared_negatives is None or negative_margins is None:
            raise ValueError(f"{loss_type} reads both shared_negatives and negative_margins")
        if shared_negatives.shape != (batch, batch, k) or negative_margins.shape != (batch, k):
            raise ValueError(f"shared_negatives must be [B, B, k] = {[batch, batch, k]} and negative_margins "
                             f"[B, k], got {list(shared_negatives.shape)} and {list(negative_margins.shape)}")
        return loss.function(*arguments, shared_negatives=shared_negatives, negative_margins=negative_margins)
    if negative_mask is not None:
        if negative_mask.shape != rejected_logps.shape or not negative_mask.any(dim=-1).all():
            raise ValueError(f"negative_mask must be [B, k] like the rejected log-probs with a negative counted "
                             f"in every row, got {tuple(negative_mask.shape)}")
        return loss.function(*arguments, negative_mask=negative_mask)
    if loss.reads_lengths:
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError(f"{loss_type} reads the completions' token counts; pass chosen_lengths and "
                             f"rejected_lengths")
        return loss.function(*arguments, chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths,
                             target_margin=target_margin)
    if target_margin != 0:
        raise ValueError(f"{loss_type} has no target margin; only the losses that read lengths do")
    return loss.function(*arguments)
