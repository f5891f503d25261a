"""What a truncated model stores, and is counted: min(rank, r(p)) factor columns, or the dense matrix
when that is not larger; and truncation of plain nn.Linear targets resolved by identity."""
import pytest
import torch
from torch import nn

import q3r
from q3r.truncation import SpectralCache, parameter_counts
from tests.reference import target_rank_ref


def low_rank_model(k: int, d: int = 24, h: int = 40) -> nn.Sequential:
    """A (h x d) and a (d x h) Linear whose weights have rank exactly k, as LoRA factors produce."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, d)).double()
    with torch.no_grad():
        for lin in (model[0], model[2]):
            d_out, d_in = lin.weight.shape
            lin.weight.copy_(torch.randn(d_out, k, dtype=torch.float64) @ torch.randn(k, d_in, dtype=torch.float64))
    return model


def by_hand(shape, k, p):
    """k' = min(k, r(p)) columns (r(1) = min(d1, d2)), or dense when k' (d1 + d2) >= d1 d2."""
    d1, d2 = shape
    r = min(d1, d2) if p >= 1 else target_rank_ref(d1, d2, p)
    kept = min(k, r)
    return d1 * d2 if kept * (d1 + d2) >= d1 * d2 else kept * (d1 + d2)


@pytest.mark.parametrize("k", [2, 5])
@pytest.mark.parametrize("p", [0.05, 0.2, 0.5, 1.0])
def test_a_rank_k_matrix_counts_min_of_k_and_rp_columns(k, p):
    model = low_rank_model(k)
    targets = [model[0], model[2]]
    counts = parameter_counts(model, targets, p)
    expected = {f"linear{i}": (40 * 24, by_hand((40, 24) if i == 0 else (24, 40), k, p)) for i in (0, 1)}
    assert counts["targets"] == expected
    cache = SpectralCache(targets)
    assert cache.counts(model, p) == counts                      # the cache's ranks give the same counts
    fact = cache.factorized_model(model, p)
    assert sum(t.numel() for t in fact.parameters()) == counts["model_kept"]      # stored == counted
    x = torch.randn(6, 24, dtype=torch.float64)
    torch.testing.assert_close(fact(x), cache.truncated_model(model, p)(x), rtol=1e-9, atol=1e-9)


def test_lora_counts_stop_growing_past_its_rank_while_dense_weights_grow():
    lora = low_rank_model(3)
    counts = [parameter_counts(lora, [lora[0], lora[2]], p)["targeted_kept"] for p in (0.2, 0.5, 1.0)]
    assert counts == [3 * 64 * 2] * 3                            # r(0.2) = 3 for 40 x 24: the same at every p
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(24, 40), nn.ReLU(), nn.Linear(40, 24)).double()
    grows = [parameter_counts(dense, [dense[0], dense[2]], p)["targeted_kept"] for p in (0.2, 0.5, 1.0)]
    assert grows == [2 * 3 * 64, 2 * 7 * 64, 2 * 960]           # r(0.5) = 7; p = 1 is dense


def test_truncate_takes_plain_linear_modules_like_adamq3r():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).double()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cut = q3r.truncate(model, [model[0], model[2]], 0.2)
    for i, lin in ((0, cut[0]), (2, cut[2])):
        d_out, d_in = lin.weight.shape
        assert torch.linalg.matrix_rank(lin.weight).item() == target_rank_ref(d_out, d_in, 0.2)
        assert torch.equal(lin.bias, before[f"{i}.bias"])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())       # original untouched
    fact = SpectralCache([model[0], model[2]]).factorized_model(model, 0.2)
    assert isinstance(fact[0], q3r.LowRankLinear) and isinstance(fact[2], q3r.LowRankLinear)
    x = torch.randn(4, 16, dtype=torch.float64)
    torch.testing.assert_close(fact(x), cut(x))
    with pytest.raises(ValueError, match="is not a parameter of Sequential"):
        q3r.truncate(model, [nn.Linear(16, 32)], 0.2)


def test_a_bare_linear_and_a_zero_matrix():
    torch.manual_seed(0)
    lin = nn.Linear(20, 30).double()
    fact = SpectralCache([lin]).factorized_model(lin, 0.2)
    r = target_rank_ref(30, 20, 0.2)
    assert isinstance(fact, q3r.LowRankLinear) and sum(p.numel() for p in fact.parameters()) == r * 50 + 30
    zero = nn.Sequential(nn.Linear(8, 8))
    with torch.no_grad():
        zero[0].weight.zero_()
    assert parameter_counts(zero, [zero[0]], 0.5)["targets"] == {"linear0": (64, 0)}       # stores nothing
    assert sum(p.numel() for p in SpectralCache([zero[0]]).factorized_model(zero, 0.5).parameters()) == 8
