"""``lora_form: paper``: the LoRA baseline of the Q3R paper's published code (``Functions/Lora.py``,
``LoRALinear``) for replication: y = x A B (alpha / r), A (d_in, r) and B (r, d_out) from
N(0, 0.01^2), alpha in (0, 1] (default 1), no bias, no dense weight; r = r(target_rank) per matrix
(per part of a fused qkv). Checked against a slow float64 reference written from that description."""
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import q3r
from tuning.trial import spec as config
from tuning.trial.evaluation import accuracy
from tuning.trial.export import export_model, load_exported
from tuning.trial.layers import PaperLoRALinear
from tuning.trial.recipe import CHECKPOINT, load_data, run_trial, technique_options
from tuning.trial.spec import SpecError
from tuning.trial.techniques import build_technique

from tests.trial.test_recipe import Interrupt, tiny
from tests.trial.test_techniques import TARGETED, vit


def paper_rank(d1, d2, p):
    """r(p) = floor(p d1 d2 / (d1 + d2)), at least 1 (the paper's rank for a d1 x d2 matrix)."""
    return max(1, math.floor(p * d1 * d2 / (d1 + d2)))


def slow_paper_lora(x, As, Bs, alpha):
    """Loop by loop: out[n, j] of segment s = sum_k sum_i x[n, i] A_s[i, k] B_s[k, j] * alpha / r_s."""
    rows = []
    for n in range(x.shape[0]):
        row = []
        for A, B in zip(As, Bs):
            r = A.shape[1]
            for j in range(B.shape[1]):
                total = 0.0
                for k in range(r):
                    for i in range(x.shape[1]):
                        total += float(x[n, i]) * float(A[i, k]) * float(B[k, j])
                row.append(total * alpha / r)
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float64)


def paper_cfg(**technique):
    cfg = tiny("lora", epochs=2, eval_every=1)
    return cfg.model_copy(update={"technique": cfg.technique.model_copy(update={"lora_form": "paper", **technique})})


def test_init_is_n_0_001_and_ignores_the_original_weight():
    torch.manual_seed(0)
    layer = PaperLoRALinear(nn.Linear(512, 256, dtype=torch.float64), [(0, 256, 64)])
    A, B = layer.A[0].detach(), layer.B[0].detach()
    assert A.shape == (512, 64) and B.shape == (64, 256) and A.dtype == torch.float64
    for f in (A, B):
        n = f.numel()
        assert abs(f.mean().item()) < 4 * 0.01 / math.sqrt(n)                  # mean 0
        assert f.std().item() == pytest.approx(0.01, rel=0.03)                  # std 0.01 (se ~0.5%)
        inside = (f.abs() < 0.01).double().mean().item()                        # normal: 68.3% within 1 std
        assert inside == pytest.approx(math.erf(1 / math.sqrt(2)), abs=0.015)
    assert not torch.equal(A[:64, :64], B[:, :64])                              # two independent draws
    lin = nn.Linear(512, 256, dtype=torch.float64)
    torch.manual_seed(3)
    one = PaperLoRALinear(lin, [(0, 256, 64)])
    with torch.no_grad():
        lin.weight.mul_(7.0)
    torch.manual_seed(3)
    two = PaperLoRALinear(lin, [(0, 256, 64)])
    assert torch.equal(one.A[0], two.A[0]) and torch.equal(one.B[0], two.B[0])
    assert {n for n, _ in one.named_parameters()} == {"A.0", "B.0"}


@pytest.mark.parametrize("alpha", [1.0, 0.5, 0.01])
def test_forward_and_merged_weight_scale_by_alpha_over_r_per_segment(alpha):
    torch.manual_seed(1)
    lin = nn.Linear(6, 7, dtype=torch.float64)
    layer = PaperLoRALinear(lin, [(0, 3, 1), (3, 5, 2), (5, 7, 3)], alpha)       # three parts, three ranks
    x = torch.randn(4, 6, dtype=torch.float64)
    expected = slow_paper_lora(x, [a.detach() for a in layer.A], [b.detach() for b in layer.B], alpha)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-15)
        merged = layer.to_linear()
        assert merged.bias is None
        torch.testing.assert_close(merged(x), expected, rtol=1e-12, atol=1e-15)


def test_built_on_every_targeted_linear_without_bias_at_rank_r_p():
    model = vit()
    total_before = sum(p.numel() for p in model.parameters())
    removed = sum(p.numel() for n in TARGETED for p in model.get_submodule(n).parameters())
    tech = build_technique("lora", model, target_rank=0.25, lora_form="paper")
    d, kept = 16, 0
    shapes = {"blocks.0.attn.qkv": [(16, 16)] * 3, "blocks.0.attn.proj": [(16, 16)],
              "blocks.0.mlp.fc1": [(64, 16)], "blocks.0.mlp.fc2": [(16, 64)]}
    for name in TARGETED:
        layer = tech.model.get_submodule(name)
        assert isinstance(layer, PaperLoRALinear) and layer.bias is None and layer.alpha == 1.0
        ranks = [paper_rank(d_out, d_in, 0.25) for d_out, d_in in shapes[name]]
        assert [r for _, _, r in layer.segments] == ranks
        assert [tuple(a.shape) for a in layer.A] == [(d_in, r) for (_, d_in), r in zip(shapes[name], ranks)]
        assert [tuple(b.shape) for b in layer.B] == [(r, d_out) for (d_out, _), r in zip(shapes[name], ranks)]
        n = sum(p.numel() for p in layer.parameters())
        assert n == sum(r * (d_out + d_in) for (d_out, d_in), r in zip(shapes[name], ranks))
        kept += n
        assert not any(n.endswith("bias") for n, _ in layer.named_parameters())
    assert sum(p.numel() for p in tech.model.parameters()) == total_before - removed + kept
    dense = tech.dense_model()
    assert all(type(dense.get_submodule(n)) is nn.Linear and dense.get_submodule(n).bias is None for n in TARGETED)
    counts = q3r.parameter_counts(dense, q3r.select_targets(dense, ("qkv", "proj", "fc1", "fc2")), 0.5)
    assert counts["targeted_kept"] == kept                     # truncation at p >= p0 stores the factors
    assert d == 16


def test_a_tiny_trial_runs_scores_resumes_bitwise_and_exports(tmp_path):
    cfg = paper_cfg()
    assert technique_options(cfg.technique, 10) == {"lora_form": "paper"}
    reports = []
    full = run_trial(cfg, report=reports.append, checkpoint_dir=str(tmp_path / "a"))
    assert full.status == "completed" and [r["epoch"] for r in reports] == [1, 2]
    last = reports[-1]
    assert last["params@0.1"] < last["params@0.5"] == last["params@1"]     # its rank-r(0.2) factors at p >= 0.2
    assert all(0.0 <= last[f"acc@{p}"] <= 1.0 for p in ("0.1", "0.5", "1"))

    def stop_after_first(metrics):
        raise Interrupt

    with pytest.raises(Interrupt):
        run_trial(cfg, report=stop_after_first, checkpoint_dir=str(tmp_path / "b"))
    resumed = run_trial(cfg, checkpoint_dir=str(tmp_path / "b"), resume=True)
    assert resumed.status == "completed" and len(resumed.history) == 2
    for key, value in full.metrics.items():
        if key != "time_s":
            assert resumed.metrics[key] == value, key                            # bitwise
    a = torch.load(tmp_path / "a" / CHECKPOINT, weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / CHECKPOINT, weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not any(k.startswith("blocks.0.attn.qkv.bias") for k in a)          # no bias was trained

    _, val_set, _ = load_data(cfg)
    for p in (0.1, 0.5):
        out = export_model(cfg, tmp_path / "a" / CHECKPOINT, p, tmp_path / f"export-{p}")
        assert out.parameters == out.counted == full.metrics[f"params@{p:g}"]
        loaded = load_exported(out.folder)
        assert sum(x.numel() for x in loaded.parameters()) == out.parameters
        assert all(loaded.get_submodule(n).bias is None for n in TARGETED)    # no bias, as trained
        acc = accuracy(loaded, DataLoader(val_set, batch_size=256), torch.device("cpu"))
        assert abs(acc - full.metrics[f"acc@{p:g}"]) * len(val_set) <= 1 + 1e-9


@pytest.mark.parametrize("technique, match", [
    ({"lora_alpha": 1.5}, r"lora_alpha must be in \(0, 1\] for lora_form paper .* but got lora_alpha=1.5"),
    ({"lora_alpha": 0.0}, r"lora_alpha"),
    ({"lora_alpha": -1.0}, r"lora_alpha"),
    ({"lora_form": "peft"}, r"lora_form"),
    ({"finetune": True}, r"lora_form paper is a pre-training form"),
])
def test_bad_values_are_one_line_errors_naming_the_field(technique, match):
    raw = {"technique": {"name": "lora", "lora_form": "paper", **technique}}
    with pytest.raises(SpecError, match=match) as err:
        config.from_dict(raw)
    assert "\n" not in str(err.value).strip()


@pytest.mark.parametrize("options, match", [
    ({"lora_alpha": 2.0}, r"^lora_alpha must be in \(0, 1\] for lora_form paper .* but got lora_alpha=2.0$"),
    ({"lora_alpha": 0}, r"^lora_alpha must be in \(0, 1\] .* but got lora_alpha=0$"),
    ({"lora_form": "other"}, r"^lora_form must be one of \('factorized', 'paper'\), but got lora_form='other'$"),
])
def test_build_technique_refuses_bad_values_in_one_line(options, match):
    model = vit()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        build_technique("lora", model, target_rank=0.25, **{"lora_form": "paper", **options})
    assert all(type(model.get_submodule(n)) is nn.Linear for n in TARGETED)     # the model is left as it was
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_the_default_form_is_still_the_factorized_one():
    assert config.TechniqueSpec().lora_form == "factorized"
    tech = build_technique("lora", vit(), target_rank=0.25)
    assert isinstance(tech.model.get_submodule("blocks.0.mlp.fc1"), q3r.LowRankLinear)


@pytest.mark.parametrize("segments", [
    [(0, 6, 0)],                         # a rank below 1
    [(0, 4, 2)],                         # rows 4.. not covered
    [(0, 2, 1), (3, 6, 1)],              # a gap (rows 2..3) though the last segment ends at the last row
    [(2, 4, 1), (0, 2, 1), (4, 6, 1)],   # out of order
])
def test_the_layer_refuses_segments_that_do_not_cover_the_rows_in_order(segments):
    with pytest.raises(ValueError, match="must cover the 6 rows in order"):
        PaperLoRALinear(nn.Linear(4, 6), segments)


@pytest.mark.parametrize("alpha", [True, "0.5", 0, 1.01])
def test_the_layer_refuses_an_alpha_outside_0_1(alpha):
    with pytest.raises(ValueError, match="lora_alpha"):
        PaperLoRALinear(nn.Linear(4, 6), [(0, 6, 2)], alpha)


def test_a_batch_of_sequences_gets_the_same_per_segment_outputs():
    """Input (B, T, d_in): each segment's outputs are concatenated along the last (feature) axis."""
    torch.manual_seed(0)
    layer = PaperLoRALinear(nn.Linear(3, 5, dtype=torch.float64), [(0, 2, 1), (2, 5, 2)], alpha=0.5)
    x = torch.randn(2, 3, 3, dtype=torch.float64)
    As, Bs = [a.detach() for a in layer.A], [b.detach() for b in layer.B]
    expected = torch.stack([slow_paper_lora(xb, As, Bs, 0.5) for xb in x])
    torch.testing.assert_close(layer(x).detach(), expected, rtol=1e-12, atol=1e-15)


def test_the_segments_error_names_them_and_the_rows():
    with pytest.raises(ValueError) as info:
        PaperLoRALinear(nn.Linear(4, 6), [(0, 4, 2)])
    assert str(info.value) == "segments [(0, 4, 2)] must cover the 6 rows in order, each with a rank >= 1"


def test_the_factors_are_on_the_layers_device():
    """A layer on the GPU gets its factors there, not on the CPU: the meta device (no data, any machine)
    stands for it."""
    layer = PaperLoRALinear(nn.Linear(5, 6, device="meta", dtype=torch.float64), [(0, 2, 1), (2, 6, 2)])
    assert {(p.device.type, p.dtype) for p in layer.parameters()} == {("meta", torch.float64)}
    assert layer.to_linear().weight.device.type == "meta"
