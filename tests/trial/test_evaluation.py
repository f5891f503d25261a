"""Scoring by truncation: while level p is evaluated every target has rank r(p); the full accuracy is
that of the untruncated model; params@p is what the factorized model stores."""
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import q3r
from tests.reference import target_rank_ref
from tuning.trial.evaluation import accuracy, score


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(16, 32), nn.Linear(32, 32), nn.Linear(32, 4)

    def forward(self, x):
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = Net()
    x = torch.randn(200, 16)
    y = model(x).argmax(-1)                           # the untruncated model is exactly right
    loader = DataLoader(TensorDataset(x, y), batch_size=64)
    return model, q3r.select_targets(model, ("fc1", "fc2")), loader


def test_every_target_has_rank_r_p_while_its_level_is_scored(setup):
    model, targets, loader = setup
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(
        tuple(int(torch.linalg.matrix_rank(t.weight.detach())) for t in targets)))
    levels = [0.05, 0.2, 1.0]
    score(model, targets, loader, levels, torch.device("cpu"))
    batches = len(loader)
    expected = [tuple(target_rank_ref(*t.shape, p) if p < 1 else min(t.shape) for t in targets) for p in levels]
    assert seen[: batches * len(levels)] == [e for e in expected for _ in range(batches)]


def test_full_accuracy_is_the_untruncated_model_even_without_level_one(setup):
    model, targets, loader = setup
    out, _ = score(model, targets, loader, [0.05], torch.device("cpu"))
    assert out["acc"] == 1.0 == accuracy(model, loader, torch.device("cpu"))
    assert out["acc@0.05"] < 0.9                          # the cut to rank 1 costs accuracy here
    assert out["params@0.05"] == q3r.parameter_counts(model, targets, 0.05)["model_kept"]
    kept = sum(sum(t.shape) * target_rank_ref(*t.shape, 0.05) for t in targets)      # (16 + 32) * 1 + 64 * 1
    assert out["targeted@0.05"] == pytest.approx(kept / (512 + 1024))
    for t in targets:                                     # and the weights are restored afterwards
        assert int(torch.linalg.matrix_rank(t.weight.detach())) == min(t.shape)


def test_a_lora_trial_counts_its_factors_at_every_level_past_its_rank():
    from tuning.trial.data import DatasetInfo
    from tuning.trial.models import build_vit
    from tuning.trial.techniques import build_technique

    torch.manual_seed(0)
    levels = [0.05, 0.1, 0.2, 1.0]
    x, y = torch.randn(40, 1, 8, 8), torch.randint(0, 10, (40,))
    loader = DataLoader(TensorDataset(x, y), batch_size=20)
    out = {}
    for name in ("lora", "adamw"):
        tech = build_technique(name, build_vit(DatasetInfo("digits", 8, 1, 10), depth=1, width=32, heads=2),
                               target_rank=0.05)
        dense = tech.dense_model()
        out[name], _ = score(dense, q3r.select_targets(dense), loader, levels, torch.device("cpu"))
    lora, adamw = out["lora"], out["adamw"]
    assert lora["params@0.05"] == adamw["params@0.05"]            # both keep r(0.05) columns
    assert lora["params@0.1"] == lora["params@0.2"] == lora["params@1"] == lora["params@0.05"]
    assert adamw["params@0.05"] < adamw["params@0.1"] < adamw["params@0.2"] < adamw["params@1"]


def _truncated_loss_ref(model, targets, x, y, p):
    """The mean cross-entropy of a copy of ``model`` whose targets are cut to rank r(p) by a float64 SVD."""
    import copy

    import numpy as np

    net = copy.deepcopy(model).double()
    with torch.no_grad():
        for name, module in net.named_modules():
            if name in {t.name for t in targets} and p < 1:
                U, S, Vt = np.linalg.svd(module.weight.numpy())
                r = target_rank_ref(*module.weight.shape, p)
                module.weight.copy_(torch.from_numpy((U[:, :r] * S[:r]) @ Vt[:r]))
        return float(torch.nn.functional.cross_entropy(net(x.double()), y))


def test_val_loss_is_the_mean_cross_entropy_at_every_level(setup):
    from tuning.trial.metrics import Metric

    model, targets, loader = setup
    x, y = loader.dataset.tensors
    out, _ = score(model, targets, loader, [0.05, 0.2, 1.0], torch.device("cpu"), metric=Metric("val_loss", "min"))
    for p in (0.05, 0.2, 1.0):
        assert out[f"val_loss@{p:g}"] == pytest.approx(_truncated_loss_ref(model, targets, x, y, p), rel=1e-5)
    assert out["val_loss"] == out["val_loss@1"] and out["val_loss@0.05"] > out["val_loss"]
    assert "acc@0.05" in out and "val_loss" not in score(model, targets, loader, [0.05], torch.device("cpu"))[0]


def test_levels_with_the_same_truncated_weights_are_evaluated_once():
    """A LoRA matrix of rank r(0.05) truncates to the same weights at 0.05, 0.1 and 0.2: the built-in (pure)
    evaluation runs once for them, with the values each level has when evaluated on its own."""
    from tuning.trial.data import DatasetInfo
    from tuning.trial.evaluation import builtin_evaluate, score_metric
    from tuning.trial.models import build_vit
    from tuning.trial.techniques import build_technique

    torch.manual_seed(0)
    x, y = torch.randn(40, 1, 8, 8), torch.randint(0, 10, (40,))
    loader = DataLoader(TensorDataset(x, y), batch_size=20)
    tech = build_technique("lora", build_vit(DatasetInfo("digits", 8, 1, 10), depth=1, width=32, heads=2),
                           target_rank=0.05)
    dense = tech.dense_model()
    targets = q3r.select_targets(dense)
    levels = [0.05, 0.1, 0.2, 1.0]
    calls = []
    pure = builtin_evaluate(loader, torch.device("cpu"))

    def counted(model):
        calls.append(1)
        return pure(model)
    counted.pure = True
    once, _ = score_metric(dense, targets, counted, levels)
    assert len(calls) == 2                                       # rank r(0.05) at 0.05, 0.1, 0.2; whole at 1
    del counted.pure
    each, _ = score_metric(dense, targets, counted, levels)
    assert len(calls) == 2 + 4 and once == each


def test_a_finetuned_model_is_scored_with_its_update_truncated(setup):
    """``base`` given: each target is W0 + [W - W0]_r(p). With a rank-1 update the cut to rank 1 keeps W
    exactly, so the truncated model stays exactly right, where cutting W itself costs accuracy."""
    from q3r.delta import DeltaSpectra

    model, targets, loader = setup
    g = torch.Generator().manual_seed(2)
    base = {t.name: t.weight.detach() - torch.outer(torch.randn(t.shape[0], generator=g),
                                                     torch.randn(t.shape[1], generator=g)) for t in targets}
    out, _ = score(model, targets, loader, [0.05], torch.device("cpu"), base=base)
    assert out["acc@0.05"] == 1.0 == out["acc"]
    assert out["params@0.05"] == DeltaSpectra(targets, base).counts(model, 0.05)["model_kept"]
    assert score(model, targets, loader, [0.05], torch.device("cpu"))[0]["acc@0.05"] < 0.9


def test_a_batch_of_one_example_is_scored_with_cross_entropy():
    """Only a one-output head is a regression head, also for two classes and a batch of one (logits (1, 2))."""
    from tuning.trial.evaluation import task_loss

    logits, y = torch.tensor([[0.2, 1.5]], dtype=torch.float64), torch.tensor([1])
    expected = -torch.log_softmax(logits, -1)[0, 1]
    torch.testing.assert_close(task_loss(logits, y), expected.float())
    torch.testing.assert_close(task_loss(torch.tensor([[0.5], [2.0]]), torch.tensor([1.0, 1.0])), torch.tensor(0.625))


def test_builtin_evaluate_runs_under_bf16_autocast_only_when_asked(setup):
    from tuning.trial.evaluation import builtin_evaluate
    from tuning.trial.metrics import Metric

    model, _, loader = setup
    x, y = loader.dataset.tensors
    metric, cpu = Metric("val_loss", "min"), torch.device("cpu")
    with torch.no_grad():
        ref = float(torch.nn.functional.cross_entropy(model(x), y))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ref_amp = float(torch.nn.functional.cross_entropy(model(x).float(), y))
    plain, amp = builtin_evaluate(loader, cpu, metric=metric)(model), builtin_evaluate(loader, cpu, True, metric)(model)
    assert plain["val_loss"] == pytest.approx(ref, rel=1e-6) and amp["val_loss"] == pytest.approx(ref_amp, rel=1e-6)
    assert abs(ref_amp - ref) > 1e-5 * ref                  # bf16 changes the loss by more than the tolerance


def test_score_metric_takes_a_float_and_names_the_level_of_a_bad_value(setup):
    from tuning.trial.evaluation import score_metric

    model, targets, loader = setup
    out, _ = score_metric(model, targets, lambda m: accuracy(m, loader, torch.device("cpu")), [0.05])
    assert out["acc"] == 1.0 and out["acc@0.05"] < 0.9
    with pytest.raises(TypeError, match="at retention 0.05 it returned 'bad'"):
        score_metric(model, targets, lambda m: "bad", [0.05])
    with pytest.raises(TypeError, match="at retention 0.05 it returned True"):
        score_metric(model, targets, lambda m: True, [0.05])
    out, _ = score_metric(model, targets, lambda m: torch.tensor([0.25]), [0.05])   # a one-element tensor
    assert out["acc@0.05"] == 0.25 and type(out["acc"]) is float


def test_the_full_model_is_evaluated_once_when_level_one_is_scored(setup):
    """K levels cost K evaluation passes; the full model's values come from the pass at p = 1."""
    from tuning.trial.evaluation import score_metric

    model, targets, loader = setup
    calls = []
    evaluate = lambda m: calls.append(1) or accuracy(m, loader, torch.device("cpu"))   # noqa: E731
    out, _ = score_metric(model, targets, evaluate, [0.05, 1.0])
    assert len(calls) == 2 and out["acc"] == out["acc@1"] == 1.0


def test_accuracy_under_amp_is_that_of_the_bf16_logits():
    """Two logits 1.0 and 1.001 (label 1) are equal in bf16: the first wins the argmax under amp only."""
    head = nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0], [1.001]]))
    loader = DataLoader(TensorDataset(torch.ones(4, 1), torch.ones(4, dtype=torch.long)), batch_size=2)
    assert accuracy(head, loader, torch.device("cpu")) == 1.0
    assert accuracy(head, loader, torch.device("cpu"), amp=True) == 0.0


def test_task_loss_is_cross_entropy_or_the_regression_heads_squared_error_in_float64_reference():
    from tuning.trial.evaluation import task_loss

    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.tensor([0, 2, 1, 1, 0])
    ref = [-torch.log_softmax(logits[i], 0)[y[i]].item() for i in range(5)]
    assert task_loss(logits, y, reduction="sum").item() == pytest.approx(sum(ref), rel=1e-6)
    assert task_loss(logits, y).item() == pytest.approx(sum(ref) / 5, rel=1e-6)
    out, target = torch.randn(5, 1, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    sq = [(out[i, 0].item() - target[i].item()) ** 2 for i in range(5)]
    assert task_loss(out, target, reduction="sum").item() == pytest.approx(sum(sq), rel=1e-6)
    assert task_loss(out, target).item() == pytest.approx(sum(sq) / 5, rel=1e-6)


def test_the_builtin_evaluate_is_pure():
    """The same weights score the same: score_metric may evaluate once for levels with the same weights."""
    from tuning.trial.evaluation import builtin_evaluate

    assert builtin_evaluate([], torch.device("cpu")).pure is True


def test_forward_batch_moves_an_image_batch_and_its_labels_to_the_device():
    """The meta device (no data, any machine) stands for the GPU: inputs and labels must both reach it."""
    from tuning.trial.evaluation import forward_batch

    meta = torch.device("meta")
    out, y = forward_batch(nn.Identity(), (torch.ones(3, 2), torch.zeros(3, dtype=torch.long)), meta)
    assert out.device == meta and y.device == meta


def test_accuracy_counts_a_label_outside_the_classes_as_wrong_without_a_loss():
    """Accuracy needs no loss: a label no logit stands for (GLUE's unlabelled -1) is a wrong answer,
    where cross-entropy would refuse it."""
    head = nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[0.0], [1.0]]))                       # always class 1
    loader = DataLoader(TensorDataset(torch.ones(4, 1), torch.tensor([1, -1, 1, -1])), batch_size=2)
    assert accuracy(head, loader, torch.device("cpu")) == 0.5


def test_a_bad_value_of_the_full_model_is_named_at_retention_1(setup):
    """Without level 1 the full model gets its own pass; a bad value there is named as level 1."""
    from tuning.trial.evaluation import score_metric

    model, targets, _ = setup
    calls = []
    evaluate = lambda m: "bad" if calls.append(1) or len(calls) > 1 else 0.5   # noqa: E731
    with pytest.raises(TypeError, match="at retention 1 it returned 'bad'"):
        score_metric(model, targets, evaluate, [0.05])
    assert len(calls) == 2
