"""A dataset in memory is batched by slicing: the same batches as its DataLoader, in the same order, so a
trial trains and scores exactly as it did with the loader."""
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from tuning.trial import parallel, recipe, techniques
from tuning.trial.batches import TensorBatches, in_memory, loader_order
from tests.trial.test_recipe import tiny


def data(n=100):
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g))


def same(loader, batches) -> bool:
    a, b = list(loader), list(batches)
    return len(a) == len(b) == len(batches) and all(
        len(x) == len(y) and all(torch.equal(u, v) for u, v in zip(x, y)) for x, y in zip(a, b))


@pytest.mark.parametrize("dataset", [data(), Subset(data(), range(70)), Subset(data(), [5, 3, 99, 0, 42, 7, 8])])
@pytest.mark.parametrize("batch_size", [1, 32, 64, 500])
def test_shuffled_batches_are_the_data_loaders(dataset, batch_size):
    for seed, epoch in ((0, 1), (0, 2), (7, 5)):
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=parallel.epoch_generator(seed, epoch))
        tensors = in_memory(dataset)
        order = loader_order(len(tensors[0]), parallel.epoch_generator(seed, epoch))
        assert same(loader, TensorBatches(tensors, batch_size, order))


def test_batches_in_order_are_the_data_loaders_and_iterate_again():
    dataset = data(360)
    batches = TensorBatches(in_memory(dataset), 256)
    assert same(DataLoader(dataset, batch_size=256), batches) and same(DataLoader(dataset, batch_size=256), batches)


def test_a_dataset_that_reads_its_items_keeps_its_loader():
    class Items(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.zeros(2), i

    assert in_memory(Items()) is None and in_memory(Subset(Items(), [0, 1])) is None
    cfg = tiny()
    assert isinstance(recipe.epoch_batches(cfg, Items(), 1), DataLoader)
    assert isinstance(recipe.epoch_batches(cfg, data(), 1), TensorBatches)


def test_a_trial_is_the_same_with_sliced_batches_as_with_its_data_loaders(monkeypatch):
    sliced = recipe.run_trial(tiny("adam_q3r_loss"))                    # digits with a limit: a Subset
    monkeypatch.setattr(recipe, "in_memory", lambda dataset: None)
    loaded = recipe.run_trial(tiny("adam_q3r_loss"))
    assert [{k: v for k, v in m.items() if k != "time_s"} for m in sliced.history] == \
        [{k: v for k, v in m.items() if k != "time_s"} for m in loaded.history]


@pytest.mark.parametrize("technique", ["adamq3r", "adam_q3r_loss", "adamw", "lora", "lorita"])
def test_adams_multi_tensor_step_trains_the_same_trial(technique, monkeypatch):
    """FOREACH: torch's multi-tensor Adam, the same numbers on CPU as its per-parameter loop."""
    cfg = tiny(technique)
    cfg.technique.weight_decay, cfg.technique.alpha = 0.05, 0.1
    seen = []
    monkeypatch.setattr(recipe, "make_schedule", lambda cfg, optimizer, steps, make=recipe.make_schedule:
                        seen.append({g["foreach"] for g in optimizer.param_groups}) or make(cfg, optimizer, steps))
    multi = recipe.run_trial(cfg)
    monkeypatch.setattr(techniques, "FOREACH", None)                 # torch's default: the loop on CPU
    loop = recipe.run_trial(cfg)
    assert seen == [{True}, {None}]
    assert [{k: v for k, v in m.items() if k != "time_s"} for m in multi.history] == \
        [{k: v for k, v in m.items() if k != "time_s"} for m in loop.history]
