"""An OperatorBank's state_dict (q3r/bank_state.py): a load gives back the saved state exactly, in the
bank's own dtype, and a state written before some of its fields existed still loads."""
import pytest
import torch

from q3r.bank import OperatorBank
from q3r.targets import Target


def _bank(seed, dtype=torch.float64, shapes=((12, 9), (12, 9), (10, 7))):
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(*s, generator=g, dtype=dtype)) for s in shapes]
    return OperatorBank([Target(p, f"w{i}") for i, p in enumerate(params)], target_rank=3)


def _refreshed(seed, dtype=torch.float64):
    bank = _bank(seed, dtype)
    bank.refresh()
    bank.refresh()
    return bank


def _equal(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].keys() == b[name].keys(), name
        for k, v in a[name].items():
            if isinstance(v, torch.Tensor):
                assert v.dtype == b[name][k].dtype and v.shape == b[name][k].shape and torch.equal(v, b[name][k]), (name, k)
            else:
                assert v == b[name][k], (name, k)


def test_a_loaded_state_is_the_saved_one_bitwise():
    state = _refreshed(0).state_dict()
    assert all(e["unconverged"] is False and e["pending"] is None and "U" in e for e in state.values())  # CPU: no lag
    other = _bank(1)
    other.load_state_dict(state)
    _equal(other.state_dict(), state)
    assert other.reweightings == 2


def test_a_float32_state_loads_in_the_banks_dtype():
    state = _refreshed(0, torch.float32).state_dict()
    other = _bank(1, torch.float64)
    other.load_state_dict(state)
    for g in other.groups:
        assert {t.dtype for t in (g.eps, g.eps_first, g.U, g.sigma, g.V)} == {torch.float64}
    for name, e in other.state_dict().items():
        for k in ("eps", "eps_first", "U", "sigma", "V"):
            assert torch.equal(e[k], state[name][k].double()), (name, k)


def test_a_state_without_the_later_fields_loads_with_their_defaults():
    """reweightings, eps_first, k_apply and unconverged were added to the entries after the first checkpoints."""
    state = _refreshed(0).state_dict()
    for e in state.values():
        for k in ("reweightings", "eps_first", "k_apply", "unconverged"):
            del e[k]
        e["pending"] = 3                                # an accelerator's answers, read at the next reweighting
    other = _bank(1)
    other.load_state_dict(state)
    assert other.reweightings == 0
    for g in other.groups:
        assert g.k_apply == g.width
        assert torch.isinf(g.eps_first).all()
        assert g.pending[0].item() == 3 and g.pending[1].tolist() == [False] * len(g.targets)


def test_a_state_missing_targets_names_them():
    state = _refreshed(0).state_dict()
    del state["w0"], state["w2"]
    with pytest.raises(KeyError) as info:
        _bank(1).load_state_dict(state)
    assert info.value.args == ("Q3R state has no operator for targets ['w0', 'w2']",)


def test_an_empty_bank_saves_and_loads_an_empty_state():
    """A bank with no target saves nothing; loading that gives reweightings 0 (no entry records a count)."""
    bank = OperatorBank([], target_rank=3)
    bank.refresh()
    bank.refresh()
    assert bank.reweightings == 2 and bank.state_dict() == {}
    bank.load_state_dict({})
    assert bank.reweightings == 0 and bank.groups == []
