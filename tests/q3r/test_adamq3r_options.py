"""AdamQ3R refuses bad options of a param group at construction, naming the value (q3r/adamq3r.py
``_validate``), before any bank is built (whose own checks, in ``resolve_rank``, would catch some of them
later in other words; torch's Adam checks only the default lr)."""
import pytest
import torch
from torch import nn

from q3r.adamq3r import AdamQ3R
from q3r.targets import Target


@pytest.mark.parametrize("option, message", [
    ({"lr": -0.1}, "Invalid learning rate: lr=-0.1"),
    ({"lr": float("nan")}, "Invalid learning rate: lr=nan"),
    ({"lmbda": -1.0}, "Invalid Q3R strength: lmbda=-1.0"),
    ({"period": 0}, "Invalid reweighting period: period=0 (an int >= 1)"),
    ({"period": 2.0}, "Invalid reweighting period: period=2.0 (an int >= 1)"),
    ({"period": True}, "Invalid reweighting period: period=True (an int >= 1)"),
    ({"target_rank": True}, "Invalid target rank: target_rank=True"),
    ({"target_rank": "0.2"}, "Invalid target rank: target_rank='0.2'"),
    ({"target_rank": 0.0}, "Invalid target rank: target_rank=0.0 (a fraction in (0, 1] or an int rank)"),
    ({"target_rank": 1.5}, "Invalid target rank: target_rank=1.5 (a fraction in (0, 1] or an int rank)"),
    ({"target_rank": 0}, "Invalid target rank: target_rank=0 (an int rank must be >= 1)"),
])
def test_bad_options_of_a_group_are_refused_naming_the_value(option, message):
    w = nn.Parameter(torch.randn(8, 6, dtype=torch.float64))
    with pytest.raises(ValueError) as info:
        AdamQ3R([{"params": [w], **option}], targets=[Target(w, "w")])
    assert str(info.value) == message


def test_the_limits_themselves_are_allowed():
    w = nn.Parameter(torch.randn(8, 6, dtype=torch.float64))
    for option in ({"lr": 0.0}, {"lmbda": 0.0}, {"period": 1}, {"target_rank": 1.0}, {"target_rank": 1}):
        AdamQ3R([{"params": [w], **option}], targets=[Target(w, "w")])


def test_a_target_outside_the_optimizers_parameters_is_named():
    w, other = (nn.Parameter(torch.randn(8, 6, dtype=torch.float64)) for _ in range(2))
    with pytest.raises(ValueError) as info:
        AdamQ3R([w], targets=[Target(other, "stray")])
    assert str(info.value) == "target 'stray': its parameter is not among the optimizer's params"


def test_a_tensor_learning_rate_is_refused():
    w = nn.Parameter(torch.randn(8, 6, dtype=torch.float64))
    lr = torch.tensor(0.01)
    with pytest.raises(ValueError) as info:
        AdamQ3R([w], lr=lr, targets=[Target(w, "w")])
    assert str(info.value) == f"AdamQ3R takes a float learning rate, but got lr={lr!r}"


def test_an_unknown_distributed_strategy_reaches_the_bank_and_is_refused():
    w = nn.Parameter(torch.randn(8, 6, dtype=torch.float64))
    with pytest.raises(ValueError) as info:
        AdamQ3R([w], targets=[Target(w, "w")], distributed="allreduce")
    assert str(info.value) == ("distributed must be one of ('share', 'broadcast'), True or None, "
                               "but got distributed='allreduce'")


def test_a_group_without_targets_has_no_bank_and_its_state_round_trips():
    w, b = (nn.Parameter(torch.randn(*shape, dtype=torch.float64)) for shape in ((8, 6), (6,)))
    opt = AdamQ3R([{"params": [w]}, {"params": [b]}], lr=1e-2, targets=[Target(w, "w")], target_rank=0.5)
    assert len(opt.banks) == 1 and opt.banks[0].targets[0].param is w
    for p in (w, b):
        p.grad = torch.ones_like(p)
    opt.step()
    state = opt.state_dict()
    again = AdamQ3R([{"params": [w]}, {"params": [b]}], lr=1e-2, targets=[Target(w, "w")], target_rank=0.5)
    again.load_state_dict(state)
    assert again.operators()["w"].eps == opt.operators()["w"].eps


def test_a_state_without_the_q3r_entry_is_refused_in_words():
    w = nn.Parameter(torch.randn(8, 6, dtype=torch.float64))
    opt = AdamQ3R([w], targets=[Target(w, "w")])
    with pytest.raises(KeyError) as info:
        opt.load_state_dict(torch.optim.Adam([w]).state_dict())
    assert info.value.args == ("this state_dict has no 'q3r' entry: it was not saved by AdamQ3R",)
