"""Training data: jsonl files tokenized once into an on-disk cache of token ids.

Every document's text field is tokenized and followed by EOS, and the ids of all
documents are written, in file order, to one flat file of uint16/uint32 that is
memory-mapped for training and cut into `block_size` blocks on the fly. Files are
read line by line and ids written a batch of documents at a time, so neither the
input nor the ids need to fit in memory.

The cache is keyed by the files' content, the tokenizer's files and everything
else that changes the ids (text field, fill-in-the-middle settings). The block
size is not part of the key: blocks are views of the same stream, so one cache
serves every block size.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

logger = logging.getLogger("codegen.training")

DATA_SUFFIXES = (".jsonl", ".json")
CACHE_VERSION = 1
_DOCUMENTS_PER_BATCH = 256  # tokenized together, then written


def find_data_files(path: str | os.PathLike) -> list[Path]:
    """A jsonl file, or every .jsonl/.json file under a directory, in sorted order."""
    path = Path(path).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in DATA_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"{path}: the directory holds no {' or '.join(DATA_SUFFIXES)} files")
        return files
    raise FileNotFoundError(f"{path}: no such data file or directory")


class BadLine(ValueError):
    pass


@dataclass
class BadLineLog:
    """Lines skipped under --skip_bad_lines: how many, and the first few reasons."""
    skip: bool
    count: int = 0
    examples: list[tuple[str, str]] = field(default_factory=list)  # (file:line, reason)

    def record(self, where: str, reason: str) -> None:
        if not self.skip:
            raise ValueError(f"{where}: {reason} (fix the line, or pass --skip_bad_lines to skip such lines)")
        self.count += 1
        if len(self.examples) < 5:
            self.examples.append((where, reason))


def parse_line(raw: bytes, text_field: str) -> str:
    """The text field of one jsonl line."""
    try:
        record = json.loads(raw)
    except UnicodeDecodeError as e:
        raise BadLine(f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise BadLine(f"invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(record, dict):
        raise BadLine(f"expected a JSON object, got {type(record).__name__}")
    if text_field not in record:
        fields = ", ".join(repr(k) for k in list(record)[:8]) or "none"
        raise BadLine(f"no field {text_field!r} (fields here: {fields}; choose one with --text_field)")
    text = record[text_field]
    if not isinstance(text, str):
        raise BadLine(f"field {text_field!r} is {type(text).__name__}, expected a string")
    return text


def iter_documents(files: list[Path], text_field: str, bad_lines: BadLineLog) -> Iterator[str]:
    """The non-empty texts of all files, one line at a time."""
    for path in files:
        with open(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    text = parse_line(raw, text_field)
                except BadLine as e:
                    bad_lines.record(f"{path}:{number}", str(e))
                    continue
                if text:
                    yield text


# ---- the cache --------------------------------------------------------------------

def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tokenizer_digest(tokenizer) -> str:
    """A hash of the files the tokenizer saves, which define its ids completely."""
    h = hashlib.sha256()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save(tmp)
        for path in sorted(Path(tmp).rglob("*")):
            if path.is_file():
                h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def ids_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


@dataclass
class TokenStream:
    """The memory-mapped ids of a tokenized dataset and how it was made."""
    ids: np.ndarray
    meta: dict
    directory: Path

    @property
    def num_tokens(self) -> int:
        return len(self.ids)


def tokenize_to_cache(files: list[Path], tokenizer, *, text_field: str, cache_root: Path, skip_bad_lines: bool,
                      encode: Callable[[str], list[int]] | None = None, encoding_key: dict | None = None
                      ) -> TokenStream:
    """Tokenize `files` into the cache (or reuse it) and map the ids.

    `encode` replaces the tokenizer's own encoding (e.g. for fill-in-the-middle);
    `encoding_key` must then describe it, as it becomes part of the cache key.
    Processes that ask for the same cache at once (the ranks of one run) wait for
    the first.
    """
    key_source = {
        "version": CACHE_VERSION,
        "files": [file_digest(p) for p in files],
        "tokenizer": tokenizer_digest(tokenizer),
        "text_field": text_field,
        "encoding": encoding_key or "plain",
    }
    key = hashlib.sha256(json.dumps(key_source, sort_keys=True).encode()).hexdigest()[:32]
    cache_root = Path(cache_root).expanduser()
    cache_root.mkdir(parents=True, exist_ok=True)
    directory = cache_root / key
    with open(cache_root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (directory / "meta.json").is_file():
            encode_batch = (lambda texts: [encode(t) for t in texts]) if encode else tokenizer.encode_batch
            _write_cache(directory, files, tokenizer, text_field, skip_bad_lines, encode_batch)
    meta = json.loads((directory / "meta.json").read_text())
    ids = np.memmap(directory / "ids.bin", dtype=meta["dtype"], mode="r", shape=(meta["num_tokens"],)) \
        if meta["num_tokens"] else np.zeros(0, dtype=meta["dtype"])
    if meta["skipped_lines"] and not skip_bad_lines:
        # this cache was built by a run that skipped them; this run must not
        BadLineLog(skip=False).record(*meta["skipped_examples"][0])
    if meta["skipped_lines"]:
        logger.warning("skipped %d bad lines in %s, e.g. %s", meta["skipped_lines"],
                       ", ".join(meta["files"]), "; ".join(": ".join(e) for e in meta["skipped_examples"]))
    return TokenStream(ids, meta, directory)


def _batches(items: Iterator[str], size: int) -> Iterator[list[str]]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _write_cache(directory: Path, files: list[Path], tokenizer, text_field: str, skip_bad_lines: bool,
                 encode_batch: Callable[[list[str]], list[list[int]]]):
    dtype = ids_dtype(len(tokenizer))
    eos = tokenizer.eos_token_id
    bad_lines = BadLineLog(skip_bad_lines)
    staging = directory.with_name(directory.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    num_tokens = num_documents = 0
    try:
        with open(staging / "ids.bin", "wb") as out:
            for texts in _batches(iter_documents(files, text_field, bad_lines), _DOCUMENTS_PER_BATCH):
                ids = [i for doc in encode_batch(texts) for i in (*doc, eos)]
                np.asarray(ids, dtype=dtype).tofile(out)
                num_tokens += len(ids)
                num_documents += len(texts)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    meta = {"files": [str(p) for p in files], "text_field": text_field, "dtype": dtype.name,
            "num_tokens": num_tokens, "num_documents": num_documents,
            "skipped_lines": bad_lines.count, "skipped_examples": bad_lines.examples}
    (staging / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    os.replace(staging, directory)
    logger.info("tokenized %d documents from %d file(s) into %d tokens (cached in %s)",
                num_documents, len(files), num_tokens, directory)


# ---- blocks -----------------------------------------------------------------------

class BlockDataset:
    """Consecutive `block_size` slices of a token stream; the last partial block is dropped.

    Items are {"input_ids", "labels"}, both the block itself: the loss shifts
    labels by one, so every position predicts the next id.
    """

    def __init__(self, stream: TokenStream, block_size: int, name: str):
        if block_size < 2:
            raise ValueError(f"--block_size must be at least 2, got {block_size}")
        self.stream = stream
        self.block_size = block_size
        if len(self) == 0:
            meta = stream.meta
            skipped = (f" ({meta['skipped_lines']} bad lines skipped, e.g. {': '.join(meta['skipped_examples'][0])})"
                       if meta["skipped_lines"] else "")
            raise ValueError(
                f"{name} data gives no training block: {meta['num_tokens']} tokens from "
                f"{meta['num_documents']} documents in {', '.join(meta['files'])}, fewer than "
                f"--block_size {block_size}{skipped}; add data or lower --block_size")

    def __len__(self) -> int:
        return self.stream.num_tokens // self.block_size

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"block {index} out of range for {len(self)} blocks")
        start = index * self.block_size
        block = np.asarray(self.stream.ids[start:start + self.block_size], dtype=np.int64)
        return {"input_ids": block, "labels": block}
