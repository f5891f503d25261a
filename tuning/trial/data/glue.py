"""Local GLUE tasks: ``data_root/<TASK dir>/train.tsv`` and the dev file, tokenised to fixed length.

Items are dicts ``{"input_ids", "attention_mask", "labels"}``; labels are long (float for STS-B).
Nothing is downloaded; a tokenizer object or a local tokenizer directory is required.
"""
from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
from torch.utils.data import Dataset

from .common import DatasetError, DatasetInfo

Col = Union[str, int]          # a header name, or a column index (headerless files; -1 = last)


@dataclass(frozen=True)
class GlueTask:
    folder: str
    dev_file: str
    header: bool
    text_cols: tuple           # one or two text columns
    label_col: Col
    labels: Optional[tuple]    # string labels in index order; None -> integer labels; () -> regression float
    num_classes: int
    skip_short_rows: bool = False   # QQP's train.tsv has a few truncated rows; skip them as transformers does


GLUE_TASKS = {
    "sst2": GlueTask("SST-2", "dev.tsv", True, ("sentence",), "label", None, 2),
    "cola": GlueTask("CoLA", "dev.tsv", False, (3,), 1, None, 2),
    "mrpc": GlueTask("MRPC", "dev.tsv", True, ("#1 String", "#2 String"), "Quality", None, 2),
    "qnli": GlueTask("QNLI", "dev.tsv", True, ("question", "sentence"), "label",
                     ("entailment", "not_entailment"), 2),
    "rte": GlueTask("RTE", "dev.tsv", True, ("sentence1", "sentence2"), "label",
                    ("entailment", "not_entailment"), 2),
    "mnli": GlueTask("MNLI", "dev_matched.tsv", True, ("sentence1", "sentence2"), "gold_label",
                     ("entailment", "neutral", "contradiction"), 3),   # Hugging Face's glue/mnli label ids
    "qqp": GlueTask("QQP", "dev.tsv", True, ("question1", "question2"), "is_duplicate", None, 2, True),
    "stsb": GlueTask("STS-B", "dev.tsv", True, ("sentence1", "sentence2"), "score", (), 1),
}
_ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "sts": "stsb"}


def read_glue_tsv(path: Path, spec: GlueTask, limit: Optional[int] = None):
    """(texts_a, texts_b or None, labels) from one GLUE tsv file; malformed rows raise with file:line."""
    if not path.is_file():
        raise DatasetError(f"GLUE file missing: {path}; put the GLUE '{spec.folder}' folder (with train.tsv "
                           f"and {spec.dev_file}) under data.data_root={path.parent.parent}")
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    a, b, ys = [], [], []
    with open(path, encoding="utf-8-sig", newline="") as f:   # -sig: MRPC's files start with a BOM
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        ncols = None
        if spec.header:
            header = next(reader, None)
            if header is None:
                raise DatasetError(f"{path}: file is empty; expected a header line and rows")
            ncols = len(header)

            def index(col: Col) -> int:
                if isinstance(col, int):
                    return col % ncols
                if col not in header:
                    raise DatasetError(f"{path}:1: header has no column {col!r} (found {header}); "
                                       f"this is not the GLUE {spec.folder} format")
                return header.index(col)
        else:
            def index(col: Col) -> int:
                return col
        text_idx = [index(c) for c in spec.text_cols]
        label_idx = index(spec.label_col)
        need = max(text_idx + [label_idx]) + 1
        for row in reader:
            line = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if (ncols is not None and len(row) != ncols) or len(row) < need:
                if spec.skip_short_rows and len(row) < need:
                    continue
                raise DatasetError(f"{path}:{line}: malformed row with {len(row)} tab-separated fields "
                                   f"(expected {ncols or f'at least {need}'}); fix or remove that line")
            raw = row[label_idx].strip()
            try:
                if spec.labels == ():
                    y = float(raw)
                elif spec.labels:
                    y = spec.labels.index(raw)
                else:
                    y = int(raw)
                    if not 0 <= y < spec.num_classes:
                        raise ValueError
            except ValueError:
                want = "a number" if spec.labels == () else (
                    "/".join(spec.labels) if spec.labels else f"an integer in 0..{spec.num_classes - 1}")
                raise DatasetError(f"{path}:{line}: bad label {raw!r} (expected {want}); fix that line") from None
            a.append(row[text_idx[0]])
            if len(text_idx) > 1:
                b.append(row[text_idx[1]])
            ys.append(y)
            if limit is not None and len(ys) >= limit:
                break
    if not ys:
        raise DatasetError(f"{path}: no data rows; expected GLUE {spec.folder} rows")
    return a, (b if len(text_idx) > 1 else None), ys


def resolve_tokenizer(tokenizer):
    if tokenizer is None:
        raise DatasetError("GLUE needs a tokenizer: set data.tokenizer to a local tokenizer directory "
                           "(e.g. the fine-tuned model's folder), or pass a Hugging Face tokenizer object")
    if isinstance(tokenizer, (str, Path)):
        path = Path(tokenizer).expanduser()
        if not path.is_dir():
            raise DatasetError(f"tokenizer directory not found: {path}; set data.tokenizer to a local folder "
                               f"holding tokenizer.json / tokenizer_config.json (nothing is downloaded)")
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except Exception as e:
            raise DatasetError(f"could not load a tokenizer from {path}: {type(e).__name__}: {e}; the folder "
                               f"needs tokenizer files saved with save_pretrained()") from e
    return tokenizer


class EncodedDataset(Dataset):
    """Pre-tokenised rows -> {"input_ids", "attention_mask", "labels"}."""

    def __init__(self, encoding: dict, labels: torch.Tensor):
        self.input_ids = encoding["input_ids"]
        self.attention_mask = encoding["attention_mask"]
        self.labels = labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.input_ids[i], "attention_mask": self.attention_mask[i], "labels": self.labels[i]}


def _encode(tok, a, b, ys, max_length: int, regression: bool) -> EncodedDataset:
    enc = tok(a, b, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt") \
        if b is not None else tok(a, padding="max_length", truncation=True, max_length=max_length,
                                  return_tensors="pt")
    if "attention_mask" not in enc:
        enc["attention_mask"] = (enc["input_ids"] != tok.pad_token_id).long()
    labels = torch.tensor(ys, dtype=torch.float32 if regression else torch.long)
    return EncodedDataset({"input_ids": enc["input_ids"].long(), "attention_mask": enc["attention_mask"].long()},
                          labels)


def load_glue(*, data_root=None, task=None, tokenizer=None, max_length: int = 128, limit=None, **_):
    key = _ALIASES.get(str(task).lower(), str(task).lower()) if task else None
    if key not in GLUE_TASKS:
        raise DatasetError(f"unknown or missing GLUE task {task!r}; set data.task to one of: "
                           f"{', '.join(GLUE_TASKS)}")
    spec = GLUE_TASKS[key]
    if data_root is None:
        raise DatasetError(f"glue/{key} needs data.data_root: the folder holding {spec.folder}/train.tsv")
    tok = resolve_tokenizer(tokenizer)
    if tok.pad_token is None:
        raise DatasetError("the tokenizer has no pad token; save it with a pad_token (e.g. '[PAD]')")
    base = Path(data_root).expanduser() / spec.folder
    regression = spec.labels == ()
    train = _encode(tok, *read_glue_tsv(base / "train.tsv", spec, limit), max_length, regression)
    val = _encode(tok, *read_glue_tsv(base / spec.dev_file, spec), max_length, regression)
    return train, val, DatasetInfo(f"glue/{key}", 0, 0, spec.num_classes, kind="text")
