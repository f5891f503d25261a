"""Truncation: best rank-r(p) approximations, one SVD per target, factorized export, counts."""
import math

import numpy as np
import pytest
import torch
from torch import nn

import q3r
from q3r.truncation import SpectralCache, parameter_counts, retained_rank
from tests.reference import singular_values, target_rank_ref


class Block(nn.Module):
    """A fused qkv (3d x d), a square proj and a rectangular fc1, like a ViT block."""

    def __init__(self, d=12, h=30):
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.fc1 = nn.Linear(d, h)
        self.head = nn.Linear(h, 3)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.head(torch.relu(self.fc1(self.proj(q * k + v))))


@pytest.fixture
def model():
    torch.manual_seed(0)
    return Block().double()


@pytest.mark.parametrize("p", [0.05, 0.2, 0.5])
def test_frobenius_error_is_root_of_dropped_energy(model, p):
    targets = q3r.select_targets(model)
    cut = q3r.truncate(model, targets, p)
    for t in targets:
        sigma = singular_values(t.weight)                      # numpy reference, descending
        r = target_rank_ref(*t.shape, p)
        err = torch.linalg.norm(t.rebind(cut).weight - t.weight).item()
        assert err == pytest.approx(math.sqrt(float(np.sum(sigma[r:] ** 2))), rel=1e-9)
        assert np.linalg.matrix_rank(t.rebind(cut).weight.detach().numpy(), tol=1e-9) == r


def test_original_untouched_and_biases_kept(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cut = q3r.truncate(model, q3r.select_targets(model), 0.1)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    for name in ("qkv.bias", "proj.bias", "fc1.bias"):
        assert torch.equal(cut.state_dict()[name], before[name])
    assert not torch.equal(cut.state_dict()["qkv.weight"], before["qkv.weight"])
    assert torch.equal(cut.state_dict()["head.weight"], before["head.weight"])  # not a target


def test_retention_one_changes_nothing(model):
    cut = q3r.truncate(model, q3r.select_targets(model), 1.0)
    for k, v in model.state_dict().items():
        assert torch.equal(cut.state_dict()[k], v)


def test_qkv_parts_truncated_separately(model):
    targets = q3r.select_targets(model)
    cut = q3r.truncate(model, targets, 0.2)
    W = cut.qkv.weight.detach().numpy()
    r = target_rank_ref(12, 12, 0.2)
    for i in range(3):
        assert np.linalg.matrix_rank(W[12 * i:12 * (i + 1)], tol=1e-9) == r
    assert np.linalg.matrix_rank(W, tol=1e-9) == 3 * r  # not one rank-r cut of the 36 x 12 matrix


def test_one_svd_per_target_serves_every_level(model, monkeypatch):
    targets = q3r.select_targets(model)
    calls = []
    real_svd = torch.linalg.svd
    monkeypatch.setattr(torch.linalg, "svd", lambda *a, **k: calls.append(a[0].shape) or real_svd(*a, **k))
    cache = SpectralCache(targets)
    n_svd = len(calls)
    x = torch.randn(5, 12, dtype=torch.float64)
    for p in (0.05, 0.1, 0.2, 0.4, 1.0):
        with cache.applied(p):
            out = model(x)
        expected = cache.truncated_model(model, p)(x)
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    assert len(calls) == n_svd                               # no SVD after the cache was built
    assert sum(s[0] for s in calls) == len(targets)          # one batched SVD, G matrices, per shape
    torch.testing.assert_close(model(x), cache.truncated_model(model, 1.0)(x))  # restored


@pytest.mark.parametrize("p", [0.1, 0.3, 1.0])
def test_factorized_export_same_outputs_and_real_saving(model, p):
    targets = q3r.select_targets(model)
    cache = SpectralCache(targets)
    dense = cache.truncated_model(model, p)
    fact = cache.factorized_model(model, p)
    x = torch.randn(7, 12, dtype=torch.float64)
    torch.testing.assert_close(fact(x), dense(x), rtol=1e-10, atol=1e-10)
    counts = parameter_counts(model, targets, p)
    assert sum(q.numel() for q in fact.parameters()) == counts["model_kept"]
    if p < 1.0:
        assert isinstance(fact.qkv, q3r.LowRankLinear)
        assert counts["model_kept"] < counts["model_dense"]


def test_parameter_counts_by_hand(model):
    targets = q3r.select_targets(model)
    counts = parameter_counts(model, targets, 0.2)
    r_sq, r_fc = target_rank_ref(12, 12, 0.2), target_rank_ref(30, 12, 0.2)
    assert counts["targets"]["qkv[q]"] == (144, r_sq * 24)
    assert counts["targets"]["fc1"] == (360, r_fc * 42)
    assert counts["targeted_kept"] == 4 * r_sq * 24 + r_fc * 42
    assert counts["model_dense"] == sum(q.numel() for q in model.parameters())


def test_retained_rank_is_the_one_formula():
    assert retained_rank((192, 192), 0.2) == 19 == q3r.target_rank((192, 192), 0.2)
    assert retained_rank((192, 192), 1.0) is None
    with pytest.raises(ValueError, match="fraction=0"):
        retained_rank((192, 192), 0)


def test_a_float64_factorized_layer_merges_into_a_float64_linear():
    from q3r.truncation import LowRankLinear

    torch.manual_seed(0)
    lin = nn.Linear(7, 5).double()
    A, B = torch.randn(3, 2, dtype=torch.float64), torch.randn(2, 7, dtype=torch.float64)
    layer = LowRankLinear.from_linear(lin, [(1, 4, (A, B))])
    merged = layer.to_linear()
    assert merged.weight.dtype == merged.bias.dtype == torch.float64
    expected = torch.cat([lin.weight[:1], A @ B, lin.weight[4:]]).detach()
    assert torch.equal(merged.weight.detach(), expected) and torch.equal(merged.bias.detach(), lin.bias.detach())


def test_low_rank_of_a_bfloat16_weight_comes_back_in_bfloat16():
    """bf16 weights are decomposed in float32; the truncated matrix is returned in the weight's dtype."""
    torch.manual_seed(0)
    lin = nn.Linear(8, 6).to(torch.bfloat16)
    cache = SpectralCache([q3r.Target(lin.weight, "w", "weight")])
    assert cache.low_rank("w", 0.3).dtype == torch.bfloat16


def test_numerical_rank_is_matrix_ranks_count_at_the_tolerance_and_of_an_empty_matrix():
    """Strictly above sigma_1 max(d1, d2) eps, as torch.linalg.matrix_rank counts: a singular value equal
    to the tolerance (2 * 2^-52 for a 2 x 2 float64 matrix with sigma_1 = 1) is not counted."""
    from q3r.truncation import numerical_rank

    D = torch.diag(torch.tensor([1.0, 2.0 ** -51], dtype=torch.float64))
    assert numerical_rank(torch.linalg.svdvals(D), D.shape) == int(torch.linalg.matrix_rank(D)) == 1
    empty = torch.zeros(0, 3, dtype=torch.float64)
    assert numerical_rank(torch.linalg.svdvals(empty), empty.shape) == int(torch.linalg.matrix_rank(empty)) == 0


def test_parameter_counts_take_a_float64_weights_rank_in_float64():
    """sigma_2 = 1e-9 is above float64's tolerance (8 * 2.2e-16) but below float32's (8 * 1.2e-7)."""
    linear = nn.Linear(8, 8, bias=False).double()
    with torch.no_grad():
        linear.weight.copy_(torch.diag(torch.tensor([1.0, 1e-9] + [0.0] * 6, dtype=torch.float64)))
    rank = int(torch.linalg.matrix_rank(linear.weight.detach()))
    assert rank == 2
    counts = parameter_counts(linear, [linear], 1.0)
    assert counts["targets"]["linear0"] == (64, rank * (8 + 8))


def test_to_linear_makes_the_linear_on_the_layers_device():
    """On the meta device (any device but the CPU): the merged Linear is not made on the default device."""
    A, B = torch.empty(4, 2, device="meta"), torch.empty(2, 6, device="meta")
    layer = q3r.LowRankLinear.from_linear(nn.Linear(6, 4, device="meta"), [(0, 4, (A, B))])
    merged = layer.to_linear()
    assert merged.weight.device.type == "meta" and merged.bias.device.type == "meta"
    assert merged.weight.shape == (4, 6)
