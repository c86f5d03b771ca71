"""Training data: jsonl reading, bad lines, the token cache, blocks, fill-in-the-middle."""
import json
from pathlib import Path

import numpy as np
import pytest

from codegen.tokenizer import codegen_tokenizer
from codegen.training.data import BlockDataset, find_data_files, tokenize_to_cache
from codegen.tokenizer import FIM_TOKENS
from codegen.training.fim import FimTransform, add_fim_tokens

DOCS = ["def add(a, b):\n    return a + b\n", "x = 1\n", "class A:\n    pass\n"]


@pytest.fixture(scope="module")
def tokenizer():
    return codegen_tokenizer()


def write_jsonl(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def tokenize(files, tokenizer, cache, **kwargs):
    kwargs = {"text_field": "code", "skip_bad_lines": False, **kwargs}
    return tokenize_to_cache(files, tokenizer, cache_root=cache, **kwargs)


def test_documents_are_joined_with_eos_in_file_order(tmp_path, tokenizer):
    a = write_jsonl(tmp_path / "d" / "a.jsonl", [{"code": DOCS[0]}, {"code": DOCS[1]}])
    b = write_jsonl(tmp_path / "d" / "sub" / "b.json", [{"code": DOCS[2], "other": 1}])
    files = find_data_files(tmp_path / "d")
    assert files == [a, b]
    stream = tokenize(files, tokenizer, tmp_path / "cache")
    expected = [i for doc in DOCS for i in tokenizer.encode(doc) + [tokenizer.eos_token_id]]
    assert stream.ids.tolist() == expected
    assert stream.meta["num_documents"] == 3


def test_many_documents_cross_write_batches_intact(tmp_path, tokenizer):
    docs = [f"def f{i}():\n    return {i}\n" for i in range(700)]
    path = write_jsonl(tmp_path / "many.jsonl", [{"code": d} for d in docs])
    stream = tokenize([path], tokenizer, tmp_path / "cache")
    expected = [i for doc in docs for i in tokenizer.encode(doc) + [tokenizer.eos_token_id]]
    assert stream.ids.tolist() == expected


def test_missing_inputs_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere"):
        find_data_files(tmp_path / "nothere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .jsonl or .json files"):
        find_data_files(tmp_path / "empty")


@pytest.mark.parametrize("line, reason", [
    ('{"code": "x = 1"', "invalid JSON"),
    ('["code"]', "expected a JSON object"),
    ('{"text": "x = 1"}', "no field 'code'"),
    ('{"code": 3}', "field 'code' is int"),
])
def test_bad_line_stops_with_file_and_line(tmp_path, tokenizer, line, reason):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"code": DOCS[0]}, line, {"code": DOCS[1]}])
    with pytest.raises(ValueError, match=f"bad.jsonl:2: {reason}") as e:
        tokenize([path], tokenizer, tmp_path / "cache")
    assert "--skip_bad_lines" in str(e.value)


def test_skipped_bad_lines_are_counted(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"code": DOCS[0]}, "{oops", {"code": DOCS[1]}, '{"text": ""}'])
    stream = tokenize([path], tokenizer, tmp_path / "cache", skip_bad_lines=True)
    assert stream.meta["skipped_lines"] == 2
    assert stream.meta["num_documents"] == 2
    # the cache built by a skipping run must not let a strict run pass silently
    with pytest.raises(ValueError, match="bad.jsonl:2: invalid JSON"):
        tokenize([path], tokenizer, tmp_path / "cache")


def test_cache_is_reused_and_keyed_by_content_field_and_encoding(tmp_path, tokenizer, monkeypatch):
    path = write_jsonl(tmp_path / "a.jsonl", [{"code": DOCS[0], "alt": DOCS[1]}])
    first = tokenize([path], tokenizer, tmp_path / "cache")

    import codegen.training.data as data
    monkeypatch.setattr(data, "_write_cache", lambda *a: pytest.fail("cache not reused"))
    assert tokenize([path], tokenizer, tmp_path / "cache").directory == first.directory
    monkeypatch.undo()

    other_field = tokenize([path], tokenizer, tmp_path / "cache", text_field="alt")
    other_encoding = tokenize([path], tokenizer, tmp_path / "cache", encode=lambda t: [1, 2],
                              encoding_key={"fim_rate": 1.0})
    write_jsonl(path, [{"code": DOCS[2], "alt": DOCS[1]}])
    other_content = tokenize([path], tokenizer, tmp_path / "cache")
    directories = {first.directory, other_field.directory, other_encoding.directory, other_content.directory}
    assert len(directories) == 4
    assert other_content.ids.tolist() == tokenizer.encode(DOCS[2]) + [tokenizer.eos_token_id]
    assert other_encoding.ids.tolist() == [1, 2, tokenizer.eos_token_id]


def test_blocks_cut_the_stream_and_drop_the_tail(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "a.jsonl", [{"code": d} for d in DOCS * 4])
    stream = tokenize([path], tokenizer, tmp_path / "cache")
    dataset = BlockDataset(stream, 8, "training")
    assert len(dataset) == stream.num_tokens // 8
    item = dataset[2]
    assert item["input_ids"].dtype == np.int64
    assert item["input_ids"].tolist() == stream.ids[16:24].tolist() == item["labels"].tolist()
    with pytest.raises(IndexError):
        dataset[len(dataset)]


def test_too_little_data_is_an_error(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "a.jsonl", [{"code": "x = 1\n"}])
    stream = tokenize([path], tokenizer, tmp_path / "cache")
    with pytest.raises(ValueError, match="validation data gives no training block.*--block_size 64"):
        BlockDataset(stream, 64, "validation")


# ---- fill-in-the-middle ---------------------------------------------------------

def test_fim_tokens_are_added_once(tokenizer):
    tok = codegen_tokenizer()
    size = len(tok)
    sentinels, added = add_fim_tokens(tok)
    assert added == list(FIM_TOKENS)
    assert len(tok) == size + 3
    assert {sentinels.prefix, sentinels.middle, sentinels.suffix} == set(range(size, size + 3))
    again, added_again = add_fim_tokens(tok)
    assert again == sentinels and added_again == []
    assert tok.encode("<fim_prefix>") == [sentinels.prefix]


def _split(ids, *markers):
    """ids cut at the first occurrence of each marker in turn."""
    parts, rest = [], list(ids)
    for m in markers:
        i = rest.index(m)
        parts.append(rest[:i])
        rest = rest[i + 1:]
    return parts + [rest]


def test_psm_and_spm_rearrange_the_whole_document():
    tok = codegen_tokenizer()
    s, _ = add_fim_tokens(tok)
    text = "def area(r):\n    return 3.14159 * r * r\n\nprint(area(2))\n"
    psm = FimTransform(tok.encode, s, rate=1.0, spm_rate=0.0, seed=1)
    spm = FimTransform(tok.encode, s, rate=1.0, spm_rate=1.0, seed=1)
    for _ in range(20):
        ids = psm(text)
        before, prefix, suffix, middle = _split(ids, s.prefix, s.suffix, s.middle)
        assert before == []
        assert tok.decode(prefix) + tok.decode(middle) + tok.decode(suffix) == text

        ids = spm(text)
        before, nothing, suffix, prefix_and_middle = _split(ids, s.prefix, s.suffix, s.middle)
        assert before == [] and nothing == []
        assert tok.decode(prefix_and_middle) + tok.decode(suffix) == text


def test_fim_rate_and_seed():
    tok = codegen_tokenizer()
    s, _ = add_fim_tokens(tok)
    docs = [f"value_{i} = compute({i})\n" for i in range(300)]
    never = FimTransform(tok.encode, s, rate=0.0, spm_rate=0.5, seed=0)
    assert [never(d) for d in docs] == [tok.encode(d) for d in docs]
    half = [FimTransform(tok.encode, s, rate=0.5, spm_rate=0.5, seed=3) for _ in range(2)]
    first, second = ([t(d) for d in docs] for t in half)
    assert first == second
    rearranged = sum(ids[0] == s.prefix for ids in first)
    assert 100 < rearranged < 200
    with pytest.raises(ValueError, match="--fim_rate"):
        FimTransform(tok.encode, s, rate=1.5, spm_rate=0.5, seed=0)
