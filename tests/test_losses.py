"""The preference losses against values worked out by hand, against TRL's DPO, and at extreme margins."""

import math

import pytest
import torch
import torch.nn.functional as F

from trainer.losses import LOSS_TYPES, LOSSES, dmpo_loss, dpo_loss, loss_choices, mppo_loss, preference_loss, sdpo_loss


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def as_tensors(chosen, rejected, ref_chosen, ref_rejected, dtype=torch.float32):
    return (torch.tensor(chosen, dtype=dtype), torch.tensor(rejected, dtype=dtype),
            torch.tensor(ref_chosen, dtype=dtype), torch.tensor(ref_rejected, dtype=dtype))


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
        losses = preference_loss(loss_type, *batch, beta=1.0)
        assert losses.shape == (2,)
        single = preference_loss(loss_type, *(tensor[1:] for tensor in batch), beta=1.0)
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
    loss = preference_loss(loss_type, chosen, rejected, *zeros, beta=1.0).sum()
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(chosen.grad).all() and torch.isfinite(rejected.grad).all()


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_loss_moves_the_right_way(loss_type):
    batch = as_tensors([-4.0], [[-3.0, -6.0, -5.0]], [-4.5], [[-3.5, -5.0, -5.5]])
    loss = preference_loss(loss_type, *batch, beta=1.0).item()
    chosen, rejected, ref_chosen, ref_rejected = batch
    for j in range(3):
        raised = rejected.clone()
        raised[0, j] += 0.5
        assert preference_loss(loss_type, chosen, raised, ref_chosen, ref_rejected, beta=1.0).item() > loss
    assert preference_loss(loss_type, chosen + 0.5, rejected, ref_chosen, ref_rejected, beta=1.0).item() < loss


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


def test_the_registry_is_the_one_list_of_losses():
    assert LOSS_TYPES == tuple(LOSSES) == ("sdpo", "dpo", "dmpo", "mppo")
    assert [name for name, loss in LOSSES.items() if not loss.needs_reference] == ["mppo"]
    assert all(f"{name} (" in loss_choices() for name in LOSSES)
