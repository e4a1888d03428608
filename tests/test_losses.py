"""The preference losses against values worked out by hand, against TRL's DPO, and at extreme margins."""

import math

import pytest
import torch
import torch.nn.functional as F

from trainer.losses import (DYNAMIC_NEGATIVE_TAKERS, LENGTH_READERS, LOSS_TYPES, LOSSES, NEGATIVE_SHARERS,
                            boundary_cluster, dmpo_loss, dpo_loss, dynamic_negatives, jaccard, listwise_loss,
                            loss_choices, mppo_loss, napo_loss, napo_margins, napo_shared_negatives, preference_loss,
                            sdpo_loss, simpo_sdpo_loss)


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def as_tensors(chosen, rejected, ref_chosen, ref_rejected, dtype=torch.float32):
    return (torch.tensor(chosen, dtype=dtype), torch.tensor(rejected, dtype=dtype),
            torch.tensor(ref_chosen, dtype=dtype), torch.tensor(ref_rejected, dtype=dtype))


def lengths_for(loss_type: str, rejected: torch.Tensor, share: bool = False) -> dict:
    """What a loss reads besides the log-probs: token counts (every title 2 tokens long), or for NAPO nothing
    shared and no margins (with `share`, every title of the batch shared and every margin 1); nothing for
    the others."""
    if LOSSES[loss_type].shares_negatives:
        batch, k = rejected.shape
        return {"shared_negatives": torch.full((batch, batch, k), share),
                "negative_margins": torch.full(rejected.shape, float(share), dtype=rejected.dtype)}
    if not LOSSES[loss_type].reads_lengths:
        return {}
    return {"chosen_lengths": torch.full(rejected.shape[:1], 2.0), "rejected_lengths": torch.full(rejected.shape, 2.0)}


def test_k1_by_hand():
    # r_w = -2 - (-3) = 1, r_1 = -5 - (-4) = -1; beta = 0.5: DPO = -log sigmoid(0.5 * (1 - (-1))) = -log sigmoid(1).
    batch = as_tensors([-2.0], [[-5.0]], [-3.0], [[-4.0]])
    expected = -log_sigmoid(1.0)  # 0.31326...
    assert expected == pytest.approx(0.3132617, abs=1e-6)
    for loss in (sdpo_loss, dpo_loss, dmpo_loss):
        assert loss(*batch, beta=0.5).item() == pytest.approx(expected, abs=1e-6)


def test_k3_by_hand_with_uneven_titles():
    # Log-probs of titles of 1, 4 and 9 tokens differ a lot; the losses only see the sums.
    # r_w = -4 - (-6) = 2; r_j = (-3 - -2, -20 - -21, -30 - -27) = (-1, 1, -3); beta = 1.
    batch = as_tensors([-4.0], [[-3.0, -20.0, -30.0]], [-6.0], [[-2.0, -21.0, -27.0]])
    # S-DPO: -log sigmoid(-log(e^{-3} + e^{-1} + e^{-5})).
    sdpo = -log_sigmoid(-math.log(math.exp(-3) + math.exp(-1) + math.exp(-5)))
    # DPO averaged over the negatives: mean of -log sigmoid(2 - r_j) = -log sigmoid(3), (1), (5).
    dpo = -(log_sigmoid(3) + log_sigmoid(1) + log_sigmoid(5)) / 3
    # DMPO: -log sigmoid(2 - mean(-1, 1, -3)) = -log sigmoid(3).
    dmpo = -log_sigmoid(3)
    assert sdpo_loss(*batch, beta=1.0).item() == pytest.approx(sdpo, abs=1e-6)
    assert dpo_loss(*batch, beta=1.0).item() == pytest.approx(dpo, abs=1e-6)
    assert dmpo_loss(*batch, beta=1.0).item() == pytest.approx(dmpo, abs=1e-6)
    # S-DPO = log(1 + sum_j exp(beta * (r_j - r_w))) = log(1 + e^{-3} + e^{-1} + e^{-5}).
    assert (sdpo, dpo, dmpo) == pytest.approx((0.3537538, 0.1228548, 0.0485874), abs=1e-6)


def test_losses_are_per_prompt():
    batch = as_tensors([-4.0, -1.0], [[-3.0, -20.0], [-2.0, -2.0]], [-6.0, -1.0], [[-2.0, -21.0], [-2.0, -2.0]])
    for loss_type in LOSS_TYPES:
        losses = preference_loss(loss_type, *batch, beta=1.0, **lengths_for(loss_type, batch[1]))
        assert losses.shape == (2,)
        single = preference_loss(loss_type, *(tensor[1:] for tensor in batch), beta=1.0,
                                 **lengths_for(loss_type, batch[1][1:]))
        assert losses[1].item() == pytest.approx(single.item())
    # All rewards zero in the second prompt: S-DPO gives log(1 + k), the others log 2.
    assert preference_loss("sdpo", *batch, beta=1.0)[1].item() == pytest.approx(math.log(3))
    assert preference_loss("dmpo", *batch, beta=1.0)[1].item() == pytest.approx(math.log(2))


def test_dmpo_keeps_each_rejected_reference_term():
    # Changing only a rejected reference log-prob must change DMPO (it would not if the chosen
    # reference stood in for every rejected one).
    base = as_tensors([-4.0], [[-3.0, -5.0]], [-4.0], [[-3.0, -5.0]])
    moved = as_tensors([-4.0], [[-3.0, -5.0]], [-4.0], [[-1.0, -5.0]])
    # r_1 = -3 - (-1) = -2, r_2 = 0: -log sigmoid(0 - (-1)) = -log sigmoid(1).
    assert dmpo_loss(*moved, beta=1.0).item() == pytest.approx(-log_sigmoid(1.0), abs=1e-6)
    assert dmpo_loss(*base, beta=1.0).item() == pytest.approx(math.log(2), abs=1e-6)


def test_each_prompt_of_a_batch_gets_its_own_loss():
    """Two prompts with different rejected rewards (references 0, beta 1): chosen 0 and rejected [1, 3] or
    [-2, 0]. DMPO per prompt: -log sigmoid(0 - 2) and -log sigmoid(0 + 1); DPO: the mean over j of
    -log sigmoid(0 - r_j); S-DPO: -log sigmoid(-log(e^1 + e^3)) and -log sigmoid(-log(e^-2 + e^0)). A mean
    over the whole batch, or over the wrong axis, gives other numbers."""
    batch = as_tensors([0.0, 0.0], [[1.0, 3.0], [-2.0, 0.0]], [0.0, 0.0], [[0.0, 0.0], [0.0, 0.0]])
    assert dmpo_loss(*batch, beta=1.0).tolist() == pytest.approx([-log_sigmoid(-2.0), -log_sigmoid(1.0)], abs=1e-6)
    assert dpo_loss(*batch, beta=1.0).tolist() == pytest.approx(
        [(-log_sigmoid(-1.0) - log_sigmoid(-3.0)) / 2, (-log_sigmoid(2.0) - log_sigmoid(0.0)) / 2], abs=1e-6)
    assert sdpo_loss(*batch, beta=1.0).tolist() == pytest.approx(
        [-log_sigmoid(-math.log(math.exp(1) + math.exp(3))), -log_sigmoid(-math.log(math.exp(-2) + 1))], abs=1e-6)


def test_sdpo_with_one_negative_equals_trl_sigmoid_dpo_formula():
    torch.manual_seed(0)
    chosen, rejected, ref_chosen, ref_rejected = (torch.randn(16) * 5 for _ in range(4))
    beta = 0.7
    # TRL 1.16 DPOTrainer, loss_type "sigmoid" without label smoothing: -logsigmoid(beta * delta), where
    # delta = (chosen - ref_chosen) - (rejected - ref_rejected).
    trl = -F.logsigmoid(beta * ((chosen - ref_chosen) - (rejected - ref_rejected)))
    ours = sdpo_loss(chosen, rejected[:, None], ref_chosen, ref_rejected[:, None], beta)
    torch.testing.assert_close(ours, trl, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("margin", [-1e4, -30.0, 0.0, 30.0, 1e4])
def test_finite_loss_and_gradients_at_extreme_margins(dtype, loss_type, margin):
    chosen = torch.tensor([margin, 0.0], dtype=dtype, requires_grad=True)
    rejected = torch.tensor([[0.0, -margin, 1.0], [margin, margin, -margin]], dtype=dtype, requires_grad=True)
    zeros = torch.zeros(2, dtype=dtype), torch.zeros(2, 3, dtype=dtype)
    lengths = {name: value.to(dtype) if value.is_floating_point() else value
               for name, value in lengths_for(loss_type, rejected.detach(), share=True).items()}
    loss = preference_loss(loss_type, chosen, rejected, *zeros, beta=1.0, **lengths).sum()
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(chosen.grad).all() and torch.isfinite(rejected.grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("loss_type", DYNAMIC_NEGATIVE_TAKERS)
@pytest.mark.parametrize("margin", [-1e4, -30.0, 0.0, 30.0, 1e4])
def test_finite_with_dynamic_negatives_at_extreme_margins(dtype, loss_type, margin):
    chosen = torch.tensor([margin, 0.0, -margin], dtype=dtype, requires_grad=True)
    rejected = torch.tensor([[0.0, -margin, 1.0], [margin, margin, -margin], [0.0, 0.0, 0.0]], dtype=dtype,
                            requires_grad=True)
    mask, betas = dynamic_negatives(chosen, rejected, beta=1.0)
    assert torch.isfinite(betas).all() and mask.any(dim=-1).all()
    zeros = torch.zeros(3, dtype=dtype), torch.zeros(3, 3, dtype=dtype)
    loss = preference_loss(loss_type, chosen, rejected, *zeros, beta=betas, negative_mask=mask).sum()
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(chosen.grad).all() and torch.isfinite(rejected.grad).all()


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_loss_moves_the_right_way(loss_type):
    batch = as_tensors([-4.0], [[-3.0, -6.0, -5.0]], [-4.5], [[-3.5, -5.0, -5.5]])
    lengths = lengths_for(loss_type, batch[1])
    loss = preference_loss(loss_type, *batch, beta=1.0, **lengths).item()
    chosen, rejected, ref_chosen, ref_rejected = batch
    # Plackett-Luce asks a rejected title to beat the ones the reference ranks below it: only the last
    # (reference -5.5) must only lose.
    for j in ([2] if loss_type == "listwise" else range(3)):
        raised = rejected.clone()
        raised[0, j] += 0.5
        assert preference_loss(loss_type, chosen, raised, ref_chosen, ref_rejected, beta=1.0, **lengths).item() > loss
    assert preference_loss(loss_type, chosen + 0.5, rejected, ref_chosen, ref_rejected, beta=1.0,
                           **lengths).item() < loss


def test_unknown_loss_and_bad_shapes_are_refused():
    batch = as_tensors([-1.0], [[-2.0]], [-1.0], [[-2.0]])
    with pytest.raises(ValueError, match="unknown loss type"):
        preference_loss("ipo", *batch, beta=1.0)
    with pytest.raises(ValueError, match=r"\[B, k\]"):
        preference_loss("sdpo", batch[0], batch[1][0], batch[2], batch[3][0], beta=1.0)


def test_mppo_by_hand_and_without_the_reference():
    # pi_w = 0.5, pi_j = (0.25, 0.125); beta = 2: -log sigmoid(2 * ((0.5 - 0.25) + (0.5 - 0.125))) = -log sigmoid(1.25).
    batch = as_tensors([math.log(0.5)], [[math.log(0.25), math.log(0.125)]], [-1.0], [[-2.0, -3.0]])
    assert mppo_loss(*batch, beta=2.0).item() == pytest.approx(-log_sigmoid(1.25), abs=1e-6)
    assert -log_sigmoid(1.25) == pytest.approx(0.2519291, abs=1e-6)  # log(1 + e^-1.25)
    other_reference = as_tensors([math.log(0.5)], [[math.log(0.25), math.log(0.125)]], [-9.0], [[0.0, -0.5]])
    assert mppo_loss(*other_reference, beta=2.0).item() == mppo_loss(*batch, beta=2.0).item()
    # Equal probabilities: log 2 whatever k; a log-probability rounded above 0 counts as 0 (probability 1).
    assert mppo_loss(*as_tensors([-1.0], [[-1.0] * 5], [0.0], [[0.0] * 5]), beta=3.0).item() == pytest.approx(math.log(2))
    assert mppo_loss(*as_tensors([1e-3], [[-1e9]], [0.0], [[0.0]]), beta=1.0).item() == pytest.approx(-log_sigmoid(1.0))
    assert mppo_loss(*as_tensors([math.log(0.5)], [[1e-3]], [0.0], [[0.0]]), beta=1.0).item() == pytest.approx(
        -log_sigmoid(-0.5))


def test_the_registry_is_the_one_list_of_losses():
    assert LOSS_TYPES == tuple(LOSSES) == ("sdpo", "dpo", "dmpo", "mppo", "simpo_sdpo", "listwise", "napo")
    assert [name for name, loss in LOSSES.items() if not loss.needs_reference] == ["mppo", "simpo_sdpo"]
    assert LENGTH_READERS == ("simpo_sdpo",)
    assert DYNAMIC_NEGATIVE_TAKERS == ("sdpo", "dpo", "dmpo", "mppo")
    assert NEGATIVE_SHARERS == ("napo",)
    assert all(f"{name} (" in loss_choices() for name in LOSSES)
    assert loss_choices().startswith(f"sdpo ({LOSSES['sdpo'].summary}); dpo (")


def test_simpo_sdpo_by_hand():
    """Reward s = beta * log pi / |y|. Chosen -6 over 3 tokens (s = -2), rejected -2 over 1 token (s = -2) and
    -12 over 4 (s = -3); beta 1, gamma 0.5: -log sigmoid(-log(e^{0 + 0.5} + e^{-1 + 0.5})). The summed
    log-probs would rank the 1-token title first; the means tie it with the chosen one."""
    chosen, rejected = torch.tensor([-6.0]), torch.tensor([[-2.0, -12.0]])
    lengths = {"chosen_lengths": torch.tensor([3.0]), "rejected_lengths": torch.tensor([[1.0, 4.0]])}
    expected = -log_sigmoid(-math.log(math.exp(0.5) + math.exp(-0.5)))
    assert expected == pytest.approx(1.1803, abs=1e-4)  # log(1 + e^0.5 + e^-0.5) = log 3.2552
    loss = simpo_sdpo_loss(chosen, rejected, torch.tensor([-99.0]), torch.tensor([[0.0, 5.0]]), 1.0, **lengths,
                           target_margin=0.5)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # Through the registry, with another reference: the same (it reads none).
    assert preference_loss("simpo_sdpo", chosen, rejected, torch.zeros(1), torch.zeros(1, 2), beta=1.0, **lengths,
                           target_margin=0.5).item() == pytest.approx(expected, abs=1e-6)
    # k = 1 is SimPO: -log sigmoid(beta * (s_w - s_l) - gamma), here beta 2: -log sigmoid(2 * (-2 + 3) - 0.5).
    simpo = simpo_sdpo_loss(chosen, rejected[:, 1:], chosen, rejected[:, 1:], 2.0, chosen_lengths=torch.tensor([3.0]),
                            rejected_lengths=torch.tensor([[4.0]]), target_margin=0.5)
    assert simpo.item() == pytest.approx(-log_sigmoid(1.5), abs=1e-6)


def test_listwise_by_hand():
    """Rewards (beta 1): chosen 0 - (-1) = 1; rejected a = -2 - (-3) = 1, b = -1 - (-0.5) = -0.5, c = -4 - (-4) = 0.
    The reference ranks b (-0.5) > a (-3) > c (-4), so the list is (1, -0.5, 1, 0):
    L = [lse(1, -0.5, 1, 0) - 1] + [lse(-0.5, 1, 0) - (-0.5)] + [lse(1, 0) - 1]."""
    def lse(*values):
        return math.log(sum(math.exp(value) for value in values))

    batch = as_tensors([0.0], [[-2.0, -1.0, -4.0]], [-1.0], [[-3.0, -0.5, -4.0]])
    expected = (lse(1, -0.5, 1, 0) - 1) + (lse(-0.5, 1, 0) + 0.5) + (lse(1, 0) - 1)
    # log 7.0431 - 1, log 4.3248 + 0.5, log 3.7183 - 1
    assert expected == pytest.approx(0.9521 + 1.9644 + 0.3133, abs=2e-4)
    assert listwise_loss(*batch, beta=1.0).item() == pytest.approx(expected, abs=1e-6)
    # Another reference order over the same rewards gives another loss: the order is the reference's.
    chosen, rejected, ref_chosen, ref_rejected = batch
    shift = torch.tensor([[3.0, -3.0, 0.0]])
    reordered = (chosen, rejected + shift, ref_chosen, ref_rejected + shift)
    # Now the reference ranks a (0) > b (-3.5) > c (-4) over the same rewards: the list is (1, 1, -0.5, 0).
    assert listwise_loss(*reordered, beta=1.0).item() == pytest.approx(
        (lse(1, 1, -0.5, 0) - 1) + (lse(1, -0.5, 0) - 1) + (lse(-0.5, 0) + 0.5), abs=1e-6)
    # k = 1: DPO.
    one = as_tensors([-2.0], [[-5.0]], [-3.0], [[-4.0]])
    assert listwise_loss(*one, beta=0.5).item() == pytest.approx(-log_sigmoid(1.0), abs=1e-6)
    # Tied reference scores keep the list order: (1, a=1, b=-1) differs from (1, b=-1, a=1).
    tied = as_tensors([0.0], [[-1.0, -3.0]], [-1.0], [[-2.0, -2.0]])
    assert listwise_loss(*tied, beta=1.0).item() == pytest.approx((lse(1, 1, -1) - 1) + (lse(1, -1) - 1), abs=1e-6)
    # Over 19 tied titles too (an unstable sort reorders ties from about 20 values on): rewards -0.1 j, in list order.
    rewards = [0.0] + [-0.1 * j for j in range(1, 20)]
    many = as_tensors([0.0], [rewards[1:]], [0.0], [[0.0] * 19])
    assert listwise_loss(*many, beta=1.0).item() == pytest.approx(
        sum(lse(*rewards[i:]) - rewards[i] for i in range(19)), abs=1e-5)


def test_losses_count_only_the_masked_negatives_with_a_beta_each():
    """References 0; chosen 0, rejected (1, -1, 2) with only the first two counted and betas (1, 2, 5):
    gaps beta_j * (r_w - r_j) = (-1, 2). S-DPO: -log sigmoid(-log(e^1 + e^-2)); DPO: the mean of
    -log sigmoid(-1) and -log sigmoid(2); DMPO: -log sigmoid((-1 + 2) / 2); MPPO on probabilities with
    log-probs (log 0.5; log 0.25, log 0.125, 0): -log sigmoid(1 * 0.25 + 2 * 0.375)."""
    zeros = torch.zeros(1), torch.zeros(1, 3)
    chosen, rejected = torch.tensor([0.0]), torch.tensor([[1.0, -1.0, 2.0]])
    mask, betas = torch.tensor([[True, True, False]]), torch.tensor([[1.0, 2.0, 5.0]])
    expected = {"sdpo": -log_sigmoid(-math.log(math.e + math.exp(-2))),
                "dpo": (-log_sigmoid(-1.0) - log_sigmoid(2.0)) / 2,
                "dmpo": -log_sigmoid(0.5)}
    for loss_type, value in expected.items():
        assert preference_loss(loss_type, chosen, rejected, *zeros, beta=betas,
                               negative_mask=mask).item() == pytest.approx(value, abs=1e-6)
    probabilities = torch.tensor([[math.log(0.25), math.log(0.125), 0.0]])
    assert preference_loss("mppo", torch.tensor([math.log(0.5)]), probabilities, *zeros, beta=betas,
                           negative_mask=mask).item() == pytest.approx(-log_sigmoid(1.0), abs=1e-6)
    # Two prompts, each with its own mask: each row's loss is the one it gets alone (a sum or count over the
    # whole batch would mix them). Row 2 counts its last two negatives (gaps -10, -4; beta 2 each).
    pair = (torch.tensor([0.0, 0.0]), torch.tensor([[1.0, -1.0, 2.0], [0.0, 5.0, 2.0]]), torch.zeros(2),
            torch.zeros(2, 3))
    masks = torch.tensor([[True, True, False], [False, True, True]])
    pair_betas = torch.tensor([[1.0, 2.0, 5.0], [2.0, 2.0, 2.0]])
    for loss_type in ("dpo", "dmpo"):
        both = preference_loss(loss_type, *pair, beta=pair_betas, negative_mask=masks)
        alone = [preference_loss(loss_type, *(tensor[row:row + 1] for tensor in pair), beta=pair_betas[row:row + 1],
                                 negative_mask=masks[row:row + 1]).item() for row in range(2)]
        assert both.tolist() == pytest.approx(alone, abs=1e-6)
    assert preference_loss("dmpo", *pair, beta=pair_betas, negative_mask=masks)[1].item() == pytest.approx(
        -log_sigmoid(-7.0), abs=1e-6)
    # All counted with one beta: the plain losses.
    everything = torch.ones(1, 3, dtype=torch.bool)
    for loss_type in DYNAMIC_NEGATIVE_TAKERS:
        assert preference_loss(loss_type, chosen, rejected, *zeros, beta=0.7, negative_mask=everything).item() == \
            pytest.approx(preference_loss(loss_type, chosen, rejected, *zeros, beta=0.7).item(), abs=1e-6)


def test_dynamic_negatives_by_hand():
    """Row 1: chosen -2, rejected (-1, -2, -5, -7): the first two score at least as high as the chosen one
    (boundary), the others average -6. For j = 1: d_w = -1, d_b = 5, beta_1 = beta * (1 + tanh((-1 - 5 - 6) / 6) / 2);
    j = 2: d_w = 0, d_b = 4: beta * (1 + tanh(-10 / 4) / 2).
    Row 2: chosen 0 above every rejected (-10, -9.8, -5, -4.9, -1): three clusters {-10, -9.8}, {-5, -4.9},
    {-1}; the highest, {-1}, is the boundary; the discriminative mean is -7.425. d_w = 1, d_b = 6.425:
    beta * (1 + tanh((1 - 6.425 - 6) / 7.425) / 2)."""
    beta = 2.0
    mask, betas = dynamic_negatives(torch.tensor([-2.0]), torch.tensor([[-1.0, -2.0, -5.0, -7.0]]), beta)
    assert mask.tolist() == [[True, True, False, False]]
    assert betas[0, :2].tolist() == pytest.approx([beta * (1 + math.tanh(-2) / 2), beta * (1 + math.tanh(-2.5) / 2)])
    mask, betas = dynamic_negatives(torch.tensor([0.0]), torch.tensor([[-10.0, -9.8, -5.0, -4.9, -1.0]]), beta)
    assert mask.tolist() == [[False, False, False, False, True]]
    assert betas[0, 4].item() == pytest.approx(beta * (1 + math.tanh((1 - 6.425 - 6) / 7.425) / 2), abs=1e-5)
    # Every rejected title a boundary one: they stand in for the discriminative ones (d_b = log pi_j - mean).
    mask, betas = dynamic_negatives(torch.tensor([-3.0]), torch.tensor([[-1.0, -3.0]]), beta, margin=0.0)
    assert mask.tolist() == [[True, True]]
    assert betas[0].tolist() == pytest.approx([beta * (1 + math.tanh((-2 - 1) / 3) / 2), beta * (1 + math.tanh(1) / 2)])
    # Rows of a batch are selected and weighted each on its own.
    chosen, rejected = torch.tensor([-2.0, 0.0]), torch.tensor([[-1.0, -2.0, -5.0, -7.0], [-10.0, -9.8, -5.0, -1.0]])
    together = dynamic_negatives(chosen, rejected, beta)
    alone = [dynamic_negatives(chosen[row:row + 1], rejected[row:row + 1], beta) for row in range(2)]
    assert together[0].tolist() == [mask[0].tolist() for mask, _ in alone]
    torch.testing.assert_close(together[1], torch.cat([betas for _, betas in alone]))
    # 0 / 0 (the chosen title and one rejected at the discriminative mean): beta / 2, not NaN.
    mask, betas = dynamic_negatives(torch.tensor([-2.0]), torch.tensor([[-2.0]]), beta)
    assert mask.tolist() == [[True]] and betas.tolist() == [[beta / 2]]


def test_boundary_cluster_is_the_highest_interval():
    values = torch.tensor([[-1.0, -10.0, -9.8, -5.0, -4.9], [-3.0, -3.0, -3.0, -3.0, -3.0],
                           [-2.0, -8.0, -2.1, -8.1, -7.9]])
    assert boundary_cluster(values).tolist() == [[True, False, False, False, False], [True] * 5,
                                                 [True, False, True, False, False]]
    # Fewer values than clusters: each its own cluster, the highest alone.
    assert boundary_cluster(torch.tensor([[-4.0, -1.0]])).tolist() == [[False, True]]
    assert boundary_cluster(torch.tensor([[-4.0]])).tolist() == [[True]]
    # Lloyd's iterations worked by hand (starts: the sorted row's first, middle and last values).
    # The maximum needs a second cluster's members to move: {-7.75, -6.5, -6.5}, {-4.25, -4, -3.75}, {-1}.
    assert boundary_cluster(torch.tensor([[-4.0, -3.75, -1.0, -6.5, -7.75, -4.25, -6.5]])).tolist() == [
        [False, False, True, False, False, False, False]]
    # Tied starts (-2.25 twice) leave a cluster empty at first; it keeps its centre and takes the two -2.25s
    # next: {-7.5}, {-2.5}, {-2.25, -2.25}.
    assert boundary_cluster(torch.tensor([[-2.25, -7.5, -2.25, -2.5]])).tolist() == [[True, False, True, False]]
    # A single member's centre is its value: -7 alone pulls -6.25 over, leaving {-4.5} on top.
    assert boundary_cluster(torch.tensor([[-7.0, -9.75, -6.25, -4.5, -9.75, -9.25]])).tolist() == [
        [False, False, False, True, False, False]]
    assert boundary_cluster(torch.tensor([[-2.5, -2.75, -7.0, -7.5]])).tolist() == [[True, False, False, False]]
    # One value repeated: every start is one centre, two clusters stay empty, all values are on top.
    assert boundary_cluster(torch.tensor([[-3.0] * 5])).tolist() == [[True] * 5]


def test_what_a_loss_does_not_read_is_refused():
    batch = as_tensors([-1.0], [[-2.0, -3.0]], [-1.0], [[-2.0, -3.0]])
    lengths = {"chosen_lengths": torch.ones(1), "rejected_lengths": torch.ones(1, 2)}
    with pytest.raises(ValueError, match="token counts"):
        preference_loss("simpo_sdpo", *batch, beta=1.0)
    with pytest.raises(ValueError, match="token counts"):  # one of the two is not enough
        preference_loss("simpo_sdpo", *batch, beta=1.0, chosen_lengths=lengths["chosen_lengths"])
    with pytest.raises(ValueError, match="no target margin"):
        preference_loss("sdpo", *batch, beta=1.0, target_margin=0.5)
    for loss_type in ("simpo_sdpo", "listwise", "napo"):
        with pytest.raises(ValueError, match="no negative mask"):
            preference_loss(loss_type, *batch, beta=1.0, negative_mask=torch.ones(1, 2, dtype=torch.bool),
                            **lengths_for(loss_type, batch[1]))
        with pytest.raises(ValueError, match="no beta per negative"):
            preference_loss(loss_type, *batch, beta=torch.ones(1, 2), **lengths_for(loss_type, batch[1]))
    with pytest.raises(ValueError, match="a negative counted in every row"):
        preference_loss("sdpo", *batch, beta=1.0, negative_mask=torch.tensor([[False, False]]))
    pair = (torch.zeros(2), torch.zeros(2, 2), torch.zeros(2), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="a negative counted in every row"):  # the second row counts none
        preference_loss("sdpo", *pair, beta=1.0, negative_mask=torch.tensor([[True, False], [False, False]]))
    assert preference_loss("simpo_sdpo", *batch, beta=1.0, **lengths).shape == (1,)


def test_napo_by_hand_with_a_shared_title_and_margins():
    """Two prompts, k = 2, references 0, beta 1. Prompt 0 (chosen 0, rejected -1, -2) also takes prompt 1's
    first title (-3); prompt 1 (chosen -1, rejected -3, 0) takes prompt 0's second (-2). Each title keeps
    its margin (0.5, 0; 1, 0.25) wherever it goes:
        L_0 = log(1 + e^{-1 + 0.5} + e^{-2} + e^{-3 + 1}),
        L_1 = log(1 + e^{-3 + 1 + 1} + e^{0 + 1 + 0.25} + e^{-2 + 1}),
    as -log sigmoid(-log sum exp(x)) = log(1 + sum exp(x))."""
    chosen, rejected = torch.tensor([0.0, -1.0], requires_grad=True), torch.tensor([[-1.0, -2.0], [-3.0, 0.0]],
                                                                                   requires_grad=True)
    zeros = torch.zeros(2), torch.zeros(2, 2)
    shared = torch.tensor([[[False, False], [True, False]], [[False, True], [False, False]]])
    margins = torch.tensor([[0.5, 0.0], [1.0, 0.25]])
    expected = [math.log(1 + math.exp(-0.5) + math.exp(-2) + math.exp(-2)),
                math.log(1 + math.exp(-1) + math.exp(1.25) + math.exp(-1))]
    assert expected == pytest.approx([0.6298, 1.6537], abs=1e-4)  # log 1.8772, log 5.2261
    loss = preference_loss("napo", chosen, rejected, *zeros, beta=1.0, shared_negatives=shared,
                           negative_margins=margins)
    assert loss.tolist() == pytest.approx(expected, abs=1e-6)
    # The diagonal is ignored: a prompt's own titles always count, once.
    with_diagonal = shared | torch.eye(2, dtype=torch.bool).unsqueeze(-1)
    assert napo_loss(chosen, rejected, *zeros, 1.0, shared_negatives=with_diagonal,
                     negative_margins=margins).tolist() == pytest.approx(expected, abs=1e-6)
    # The shared title carries gradient back to the prompt it came from: prompt 0's loss moves prompt 1's first
    # title, not its second, by the softmax weight of that title in prompt 0's pool.
    loss[0].backward()
    weight = math.exp(-2) / (1 + math.exp(-0.5) + math.exp(-2) + math.exp(-2))
    assert rejected.grad[1].tolist() == pytest.approx([weight, 0.0], abs=1e-6)
    # beta scales the rewards, not the margins: beta 2 gives prompt 0 log(1 + e^{-2 + 0.5} + e^{-4} + e^{-6 + 1}).
    assert napo_loss(chosen, rejected, *zeros, 2.0, shared_negatives=shared, negative_margins=margins)[0].item() == \
        pytest.approx(math.log(1 + math.exp(-1.5) + math.exp(-4) + math.exp(-5)), abs=1e-6)


def test_napo_without_sharing_or_margins_is_sdpo_and_with_one_negative_dpo():
    torch.manual_seed(0)
    chosen, ref_chosen = torch.randn(5) * 3, torch.randn(5) * 3
    rejected, ref_rejected = torch.randn(5, 4) * 3, torch.randn(5, 4) * 3
    nothing = {"shared_negatives": torch.zeros(5, 5, 4, dtype=torch.bool), "negative_margins": torch.zeros(5, 4)}
    torch.testing.assert_close(napo_loss(chosen, rejected, ref_chosen, ref_rejected, 0.7, **nothing),
                               sdpo_loss(chosen, rejected, ref_chosen, ref_rejected, 0.7), rtol=0, atol=1e-6)
    one = {"shared_negatives": torch.zeros(5, 5, 1, dtype=torch.bool), "negative_margins": torch.zeros(5, 1)}
    dpo = -F.logsigmoid(0.7 * ((chosen - ref_chosen) - (rejected[:, 0] - ref_rejected[:, 0])))
    torch.testing.assert_close(napo_loss(chosen, rejected[:, :1], ref_chosen, ref_rejected[:, :1], 0.7, **one), dpo,
                               rtol=0, atol=1e-6)


def test_napo_margins_by_hand():
    # 2 * sigmoid(-2 - (-1)) = 2 * sigmoid(-1) for the title scored above the baseline, 2 * sigmoid(1) below it.
    scores = torch.tensor([[-1.0, -3.0], [-2.0, -12.0]])
    margins = napo_margins(scores, -2.0, 2.0)
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert margins.flatten().tolist() == pytest.approx([2 * sigmoid(-1), 2 * sigmoid(1), 1.0, 2 * sigmoid(10)], abs=1e-6)
    assert (2 * sigmoid(-1), 2 * sigmoid(1)) == pytest.approx((0.5379, 1.4621), abs=1e-4)
    assert napo_margins(scores, torch.tensor(-2.0), 0.0).eq(0).all()
    scored = scores.clone().requires_grad_()
    assert not napo_margins(scored, -2.0, 2.0).requires_grad  # a margin is a target, not something to train


def test_napo_shares_the_nearest_histories_titles_by_hand():
    """Histories {a, b, c}, {a, b, d}, {z}: Jaccard 2/4 between the first two, 0 otherwise. Titles as token ids:
    prompt 0 chose [1] over [2], [3]; prompt 1 chose [2] over [4], [3]; prompt 2 chose [5] over [1], [6]."""
    histories = [["a", "b", "c"], ["a", "b", "d", "a"], ["z"]]
    completions = [[[1], [2], [3]], [[2], [4], [3]], [[5], [1], [6]]]
    assert jaccard(frozenset("abc"), frozenset("abd")) == 0.5 and jaccard(frozenset(), frozenset()) == 0.0
    shared = napo_shared_negatives(histories, completions, neighbours=1)
    assert shared.shape == (3, 3, 2) and shared.dtype == torch.bool
    # Prompt 0 takes prompt 1's [4]; its [3] is prompt 0's own already.
    assert shared[0].tolist() == [[False, False], [True, False], [False, False]]
    # Prompt 1 takes nothing from prompt 0: [2] is its own true title, [3] its own rejected one.
    assert shared[1].tolist() == [[False, False]] * 3
    # Prompt 2 overlaps nobody: the tie goes to the earlier prompt, 0, whose [2] and [3] it lacks.
    assert shared[2].tolist() == [[True, True], [False, False], [False, False]]
    two = napo_shared_negatives(histories, completions, neighbours=2)
    # Prompt 0 then takes prompt 2's [6], not its [1] (prompt 0's true title).
    assert two[0].tolist() == [[False, False], [True, False], [False, True]]
    # Prompt 2 takes [2], [3] from prompt 0, then [4] from prompt 1, whose [3] it holds by now.
    assert two[2].tolist() == [[True, True], [True, False], [False, False]]
    assert not napo_shared_negatives(histories, completions, neighbours=0).any()


def test_napo_reads_its_pool_and_margins_and_nothing_else_does():
    batch = as_tensors([-1.0, -2.0], [[-2.0, -3.0], [-1.0, -4.0]], [-1.0, -2.0], [[-2.0, -3.0], [-1.0, -4.0]])
    options = lengths_for("napo", batch[1], share=True)
    with pytest.raises(ValueError, match="napo reads shared_negatives and negative_margins"):
        preference_loss("napo", *batch, beta=1.0)
    with pytest.raises(ValueError, match="reads both"):
        preference_loss("napo", *batch, beta=1.0, shared_negatives=options["shared_negatives"])
    with pytest.raises(ValueError, match=r"\[B, B, k\]"):
        preference_loss("napo", *batch, beta=1.0, shared_negatives=options["shared_negatives"][:, :1],
                        negative_margins=options["negative_margins"])
    with pytest.raises(ValueError, match=r"\[B, B, k\]"):
        preference_loss("napo", *batch, beta=1.0, shared_negatives=options["shared_negatives"],
                        negative_margins=options["negative_margins"][:1])
    for loss_type in set(LOSS_TYPES) - {"napo"}:
        with pytest.raises(ValueError, match="shares no negatives"):
            preference_loss(loss_type, *batch, beta=1.0, **options, **lengths_for(loss_type, batch[1]))
