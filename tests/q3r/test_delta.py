"""Truncating a fine-tuning update (q3r.delta) in float64 against numpy's SVD written out."""
import numpy as np
import pytest
import torch
from torch import nn

from q3r.delta import DeltaSpectra, level_rank, top_energy
from q3r.targets import Target, select_targets


def low_rank_ref(D: np.ndarray, r: int) -> np.ndarray:
    U, S, Vt = np.linalg.svd(D, full_matrices=False)
    return (U[:, :r] * S[:r]) @ Vt[:r]


def model_pair():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 6)).double()
    targets = select_targets(model, ("0", "2"))
    base = {t.name: t.weight.detach().clone() for t in targets}
    with torch.no_grad():                     # a fine-tuning update of rank 5 on each matrix, plus noise
        for t in targets:
            d1, d2 = t.shape
            t.weight.add_(torch.randn(d1, 5, dtype=torch.float64) @ torch.randn(5, d2, dtype=torch.float64) / 4
                          + 1e-3 * torch.randn(d1, d2, dtype=torch.float64))
    return model, targets, base


@pytest.mark.parametrize("level", [1, 2, 4, 0.25, 0.5])
def test_applied_is_base_plus_the_truncated_update(level):
    model, targets, base = model_pair()
    spectra = DeltaSpectra(targets, base)
    W = {t.name: t.weight.detach().numpy().copy() for t in targets}
    with spectra.applied(level):
        for t in targets:
            W0 = base[t.name].numpy()
            d1, d2 = t.shape
            r = level if isinstance(level, int) else max(1, min(int(level * d1 * d2 / (d1 + d2)), min(d1, d2) - 1))
            np.testing.assert_allclose(t.weight.detach().numpy(), W0 + low_rank_ref(W[t.name] - W0, r),
                                       rtol=1e-12, atol=1e-12)
    for t in targets:                         # restored
        assert np.array_equal(t.weight.detach().numpy(), W[t.name])


def test_full_level_keeps_the_update_and_energy_matches_numpy():
    model, targets, base = model_pair()
    spectra = DeltaSpectra(targets, base)
    before = [t.weight.detach().clone() for t in targets]
    with spectra.applied(1.0):
        for t, w in zip(targets, before):
            assert torch.equal(t.weight, w)
    for t in targets:
        S = np.linalg.svd(t.weight.detach().numpy() - base[t.name].numpy(), compute_uv=False)
        assert spectra.energy(t.name, 3) == pytest.approx((S[:3] ** 2).sum() / (S ** 2).sum(), rel=1e-12)
        assert spectra.rank[t.name] == min(t.shape)          # the noise makes it full rank
    assert top_energy(torch.zeros(4), 2) == 1.0


def test_counts_store_the_update_factors():
    model, targets, base = model_pair()
    counts = DeltaSpectra(targets, base).counts(model, 0.25)
    # 16 x 12 at p = 0.25: r = floor(0.25 * 192 / 28) = 1 -> 28 numbers; 6 x 16: r = 1 -> 22
    assert counts["targeted_kept"] == 28 + 22
    assert counts["model_kept"] == sum(p.numel() for p in model.parameters()) - (16 * 12 + 6 * 16) + 50


def test_errors_name_the_problem():
    model, targets, base = model_pair()
    with pytest.raises(KeyError, match="no pretrained weight"):
        DeltaSpectra(targets, {})
    with pytest.raises(ValueError, match="level=0"):
        level_rank((4, 4), 0)
    assert level_rank((4, 6), 9) == 4 and level_rank((4, 6), 1.0) is None


def test_a_level_that_keeps_the_whole_update_is_w_itself_in_its_dtype():
    """An int rank >= min(d1, d2) (or p = 1) keeps Delta W whole: W itself, bitwise, not W0 + an SVD's
    reconstruction; a truncated level comes back in W's dtype (bf16 weights are decomposed in float32)."""
    model, targets, base = model_pair()
    ds = DeltaSpectra(targets, base)
    for t in targets:
        assert torch.equal(ds.low_rank(t.name, min(t.shape)), t.weight.detach())
        assert torch.equal(ds.low_rank(t.name, 1.0), t.weight.detach())
    bf = nn.Linear(8, 6).to(torch.bfloat16)
    bf_ds = DeltaSpectra([Target(bf.weight, "w", "weight")], {"w": torch.zeros(6, 8, dtype=torch.bfloat16)})
    assert bf_ds.low_rank("w", 2).dtype == torch.bfloat16


def test_w0_is_taken_in_the_weights_dtype_and_a_missing_w0_names_five_targets():
    model, targets, base = model_pair()
    model.float()
    ds = DeltaSpectra(select_targets(model, ("0", "2")), base)            # float64 W0, float32 weights
    assert all(W0.dtype == torch.float32 for W0 in ds.base.values())
    assert ds.low_rank("0", 2).dtype == torch.float32
    many = nn.Sequential(*[nn.Linear(2, 2) for _ in range(6)])
    with pytest.raises(KeyError) as err:
        DeltaSpectra(select_targets(many, tuple(str(i) for i in range(6))), {})
    assert "'4'" in str(err.value) and "'5'" not in str(err.value)
