"""Dataset layer: tiny files in the real on-disk formats, loaded through ``load_dataset`` (no downloads)."""
import pickle

import numpy as np
import pytest
import torch

from tuning.trial.data import DATASETS, DatasetError, DatasetInfo, load_dataset

AUGMENTS = [None, "none", "basic", "strong"]


# ------------------------------------------------------------------------------------------- fixtures

def _batch(path, n, label_key, num_classes, rng):
    d = {b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
         label_key: [int(v) for v in rng.integers(0, num_classes, size=n)], b"batch_label": b"x"}
    with open(path, "wb") as f:
        pickle.dump(d, f)


@pytest.fixture
def cifar10_root(tmp_path):
    rng = np.random.default_rng(0)
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    for i in range(1, 6):
        _batch(base / f"data_batch_{i}", 2, b"labels", 10, rng)
    _batch(base / "test_batch", 3, b"labels", 10, rng)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    return tmp_path


@pytest.fixture
def cifar100_root(tmp_path):
    rng = np.random.default_rng(1)
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    _batch(base / "train", 4, b"fine_labels", 100, rng)
    _batch(base / "test", 2, b"fine_labels", 100, rng)
    with open(base / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}, f)
    return tmp_path


@pytest.fixture
def folder_root(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for c, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            (tmp_path / split / c).mkdir(parents=True)
            for k in range(2):
                Image.new("RGB", (20, 24), colour).save(tmp_path / split / c / f"{k}.png")
    return tmp_path


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = "the a film is good bad great movie cat sat on mat dog ran he she said yes no".split()
    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")


def _write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _glue(root):
    _write(root / "SST-2" / "train.tsv", ["sentence\tlabel", "the film is good\t1", "a bad movie\t0",
                                          "great film\t1"])
    _write(root / "SST-2" / "dev.tsv", ["sentence\tlabel", "good movie\t1", "bad\t0"])
    _write(root / "CoLA" / "train.tsv", ["gj04\t1\t\tthe cat sat on the mat", "gj04\t0\t*\tcat the mat on sat"])
    _write(root / "CoLA" / "dev.tsv", ["gj04\t1\t\the ran"])
    mrpc = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"
    _write(root / "MRPC" / "train.tsv", ["\ufeff" + mrpc, "1\t1\t2\the said yes\tshe said yes", "0\t3\t4\tthe dog ran\ta cat sat"])
    _write(root / "MRPC" / "dev.tsv", [mrpc, "1\t5\t6\the ran\tshe ran"])
    sts = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    _write(root / "STS-B" / "train.tsv", [sts, "0\tmain\tf\t2012\t1\tnone\tnone\ta cat sat\tthe cat sat\t4.200",
                                          "1\tmain\tf\t2012\t2\tnone\tnone\ta dog ran\the said no\t0.500"])
    _write(root / "STS-B" / "dev.tsv", [sts, "0\tmain\tf\t2012\t1\tnone\tnone\the ran\tshe ran\t3.000"])
    return root


# ---------------------------------------------------------------------------------------------- digits

def test_digits_deterministic_per_seed_and_stratified():
    tr1, va1, info = load_dataset("digits", seed=3, data_root="/ignored")
    tr2, va2, _ = load_dataset("digits", seed=3)
    tr3, _, _ = load_dataset("digits", seed=4)
    assert info == DatasetInfo("digits", 8, 1, 10) and info.kind == "image"
    assert torch.equal(tr1.tensors[0], tr2.tensors[0]) and torch.equal(va1.tensors[1], va2.tensors[1])
    assert not torch.equal(tr1.tensors[0], tr3.tensors[0])
    share_tr = torch.bincount(tr1.tensors[1], minlength=10).float() / len(tr1)
    share_va = torch.bincount(va1.tensors[1], minlength=10).float() / len(va1)
    assert (share_tr - share_va).abs().max() < 0.01
    assert len(tr1) + len(va1) == 1797 and len(va1) == 360


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 17, 2**31 - 1])
@pytest.mark.parametrize("fraction", [0.2, 0.1, 0.35, 0.5])
def test_digits_split_is_scikit_learns(seed, fraction):
    """The data and the split are scikit-learn's, read and drawn without importing it."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split
    from tuning.trial.data.digits import read_digits, stratified_split

    X, y = sk_digits(return_X_y=True)
    ours_X, ours_y = read_digits()
    assert np.array_equal(X, ours_X) and np.array_equal(y, ours_y) and ours_y.dtype == y.dtype
    train, val = stratified_split(y, fraction, seed)
    sk = train_test_split(X, y, test_size=fraction, stratify=y, random_state=seed)
    for ours, theirs in zip((X[train], X[val], y[train], y[val]), sk):
        assert np.array_equal(ours, theirs)
    tr, va, _ = load_dataset("digits", seed=seed, val_fraction=fraction)
    mean, std = sk[0].mean(), sk[0].std()
    assert torch.equal(tr.tensors[0], torch.tensor((sk[0] - mean) / std, dtype=torch.float32).view(-1, 1, 8, 8))
    assert torch.equal(va.tensors[1], torch.tensor(sk[3]))


def test_digits_bad_val_fraction():
    with pytest.raises(DatasetError, match="val_fraction=1.5"):
        load_dataset("digits", val_fraction=1.5)


def test_limit_keeps_first_items():
    full, _, _ = load_dataset("digits", seed=0)
    tr, va, _ = load_dataset("digits", seed=0, limit=7)
    assert len(tr) == 7 and len(va) == 360
    assert torch.equal(tr[6][0], full[6][0])


# ----------------------------------------------------------------------------------------------- cifar

@pytest.mark.parametrize("augment", AUGMENTS)
def test_cifar10_batches(cifar10_root, augment):
    tr, va, info = load_dataset("cifar10", data_root=cifar10_root, augment=augment)
    assert info == DatasetInfo("cifar10", 32, 3, 10)
    assert len(tr) == 10 and len(va) == 3
    x, y = tr[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and isinstance(y, int) and 0 <= y < 10
    assert va[0][0].shape == (3, 32, 32)


def test_cifar10_pixels_layout_and_normalisation(cifar10_root):
    with open(cifar10_root / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    tr, _, _ = load_dataset("cifar10", data_root=cifar10_root)
    x, y = tr[0]
    red = raw[b"data"][0][:1024].reshape(32, 32) / 255.0       # first 1024 bytes: red plane, row-major
    assert torch.allclose(x[0], torch.tensor((red - 0.4914) / 0.2470, dtype=torch.float32), atol=1e-5)
    assert y == raw[b"labels"][0]


@pytest.mark.parametrize("augment", AUGMENTS)
def test_cifar100_batches(cifar100_root, augment):
    tr, va, info = load_dataset("cifar100", data_root=cifar100_root, augment=augment, image_size=48, limit=3)
    assert info == DatasetInfo("cifar100", 48, 3, 100)
    assert len(tr) == 3 and len(va) == 2
    assert tr[2][0].shape == (3, 48, 48) and va[1][0].shape == (3, 48, 48)


def test_cifar_missing_files_names_path(tmp_path):
    with pytest.raises(DatasetError) as e:
        load_dataset("cifar10", data_root=tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "cifar-10-batches-py") in msg and "download: true" in msg


def test_cifar_missing_one_batch_names_file(cifar10_root):
    (cifar10_root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetError) as e:
        load_dataset("cifar10", data_root=cifar10_root)
    assert str(cifar10_root / "cifar-10-batches-py" / "data_batch_3") in str(e.value)
    assert "data_batch_1" not in str(e.value).split("(looked")[0]


def test_cifar_malformed_batch(cifar10_root):
    (cifar10_root / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="test_batch"):
        load_dataset("cifar10", data_root=cifar10_root)


def test_cifar_unknown_augment(cifar10_root):
    with pytest.raises(DatasetError, match="augment"):
        load_dataset("cifar10", data_root=cifar10_root, augment="extreme")


# ----------------------------------------------------------------------------------------- imagefolder

@pytest.mark.parametrize("augment", AUGMENTS)
def test_imagefolder(folder_root, augment):
    tr, va, info = load_dataset("imagefolder", data_root=folder_root, augment=augment, image_size=16)
    assert info == DatasetInfo("imagefolder", 16, 3, 2)
    assert len(tr) == 4 and len(va) == 4
    x, y = va[3]
    assert x.shape == (3, 16, 16) and y == 1
    assert tr[0][0].shape == (3, 16, 16)


def test_imagefolder_missing_and_mismatched(folder_root, tmp_path_factory):
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(DatasetError, match=str(empty / "train").replace("\\", "\\\\")):
        load_dataset("imagefolder", data_root=empty)
    (folder_root / "val" / "dog").rename(folder_root / "val" / "bird")
    with pytest.raises(DatasetError, match="class folders differ"):
        load_dataset("imagefolder", data_root=folder_root, image_size=16)


# ------------------------------------------------------------------------------------------------ glue

def test_glue_sst2(tmp_path, tokenizer):
    tr, va, info = load_dataset("glue", task="sst2", data_root=_glue(tmp_path), tokenizer=tokenizer, max_length=8)
    assert info == DatasetInfo("glue/sst2", 0, 0, 2, kind="text")
    assert len(tr) == 3 and len(va) == 2
    item = tr[0]
    assert set(item) == {"input_ids", "attention_mask", "labels"}
    assert item["input_ids"].shape == (8,) and item["labels"].dtype == torch.long and item["labels"] == 1
    assert item["attention_mask"].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert item["input_ids"][:4].tolist() == tokenizer("the film is good")["input_ids"]


def test_glue_cola_headerless_and_limit(tmp_path, tokenizer):
    tr, va, info = load_dataset("glue/cola", data_root=_glue(tmp_path), tokenizer=tokenizer, max_length=10, limit=1)
    assert info.name == "glue/cola" and info.num_classes == 2
    assert len(tr) == 1 and len(va) == 1
    assert tr[0]["labels"] == 1 and tr[0]["attention_mask"].sum() == 6


def test_glue_mrpc_pairs_from_tokenizer_dir(tmp_path, tokenizer):
    tok_dir = tmp_path / "tok"
    tokenizer.save_pretrained(tok_dir)
    tr, va, info = load_dataset("glue", task="mrpc", data_root=_glue(tmp_path), tokenizer=str(tok_dir),
                                max_length=12)
    assert info.num_classes == 2 and len(tr) == 2 and len(va) == 1
    assert [int(tr[i]["labels"]) for i in range(2)] == [1, 0]
    assert tr[0]["attention_mask"].sum() == 6          # both sentences of the pair are encoded


def test_glue_stsb_regression(tmp_path, tokenizer):
    tr, va, info = load_dataset("glue", task="stsb", data_root=_glue(tmp_path), tokenizer=tokenizer, max_length=8)
    assert info.num_classes == 1 and info.kind == "text"
    assert tr[0]["labels"].dtype == torch.float32 and float(tr[0]["labels"]) == pytest.approx(4.2)
    assert float(va[0]["labels"]) == pytest.approx(3.0)


def test_glue_malformed_row_names_file_and_line(tmp_path, tokenizer):
    root = _glue(tmp_path)
    _write(root / "SST-2" / "train.tsv", ["sentence\tlabel", "good\t1", "no label here"])
    with pytest.raises(DatasetError) as e:
        load_dataset("glue", task="sst2", data_root=root, tokenizer=tokenizer)
    assert f"{root / 'SST-2' / 'train.tsv'}:3" in str(e.value)
    _write(root / "SST-2" / "train.tsv", ["sentence\tlabel", "good\tpositive"])
    with pytest.raises(DatasetError, match="bad label"):
        load_dataset("glue", task="sst2", data_root=root, tokenizer=tokenizer)


def test_glue_missing_file_tokenizer_and_task(tmp_path, tokenizer):
    with pytest.raises(DatasetError) as e:
        load_dataset("glue", task="rte", data_root=tmp_path, tokenizer=tokenizer)
    assert str(tmp_path / "RTE" / "train.tsv") in str(e.value)
    with pytest.raises(DatasetError, match="tokenizer"):
        load_dataset("glue", task="sst2", data_root=_glue(tmp_path), tokenizer=None)
    with pytest.raises(DatasetError, match="sst2"):
        load_dataset("glue", task="nope", data_root=tmp_path, tokenizer=tokenizer)


@pytest.mark.parametrize("task,folder,dev,header,row,label", [
    ("qnli", "QNLI", "dev.tsv", "index\tquestion\tsentence\tlabel", "0\tis he good\the is good\tnot_entailment", 1),
    ("rte", "RTE", "dev.tsv", "index\tsentence1\tsentence2\tlabel", "0\ta cat sat\tthe cat sat\tentailment", 0),
    ("mnli", "MNLI", "dev_matched.tsv", "index\tgenre\tsentence1\tsentence2\tlabel1\tgold_label",
     "0\tfiction\the ran\tshe ran\tneutral\tneutral", 1),   # HF order: entailment 0, neutral 1, contradiction 2
    ("qqp", "QQP", "dev.tsv", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate", "0\t1\t2\tyes\tno\t1", 1),
])
def test_glue_other_tasks(tmp_path, tokenizer, task, folder, dev, header, row, label):
    _write(tmp_path / folder / "train.tsv", [header, row])
    _write(tmp_path / folder / dev, [header, row, row])
    tr, va, info = load_dataset("glue", task=task, data_root=tmp_path, tokenizer=tokenizer, max_length=10)
    assert info.name == f"glue/{task}" and len(tr) == 1 and len(va) == 2
    assert int(tr[0]["labels"]) == label and tr[0]["input_ids"].shape == (10,)


def test_glue_qqp_skips_truncated_rows(tmp_path, tokenizer):
    header = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate"
    _write(tmp_path / "QQP" / "train.tsv", [header, "0\t1\t2\tyes\tno\t1", "1\t3\t4\tis he good", "2\t5\t6\ta\tb\t0"])
    _write(tmp_path / "QQP" / "dev.tsv", [header, "0\t1\t2\tyes\tno\t1"])
    tr, _, _ = load_dataset("glue", task="qqp", data_root=tmp_path, tokenizer=tokenizer, max_length=6)
    assert [int(tr[i]["labels"]) for i in range(len(tr))] == [1, 0]


# ------------------------------------------------------------------------------------------- registry

def test_unknown_dataset_lists_known_names():
    with pytest.raises(DatasetError) as e:
        load_dataset("imagenet21k")
    for name in DATASETS:
        assert name in str(e.value)
    assert isinstance(e.value, ValueError)
