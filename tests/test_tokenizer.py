"""codegen.tokenizer against Hugging Face's tokenizers.

The expected ids come from transformers' CodeGenTokenizer / GPT2Tokenizer via tools/make_tokenizer_fixtures.py;
nothing here imports transformers.
"""
import gzip
import hashlib
import json
import platform
import subprocess
import sys
import sysconfig
from array import array
from pathlib import Path

import pytest

from codegen.tokenizer import codegeex_tokenizer, codegen_tokenizer, load_tokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "tokenizer"
FAMILIES = ("codegen", "codegeex")
COLUMN = {"codegen": 1, "codegeex": 2}  # columns of stdlib.json.gz / humaneval_x.json.gz after the content hash
HUMANEVAL_X_DIRS = [Path(__file__).parent.parent / "codegen" / "assets" / "humaneval-x",
                    Path("/work/shared/benchmarks/humaneval-x")]
FIM = ["<fim_prefix>", "<fim_middle>", "<fim_suffix>"]


@pytest.fixture(scope="module")
def toks():
    return {"codegen": codegen_tokenizer(), "codegeex": codegeex_tokenizer()}


@pytest.fixture(scope="module")
def reference():
    return json.loads((FIXTURES / "reference.json").read_text(encoding="utf-8"))


def read_gz(name):
    with gzip.open(FIXTURES / name, "rt", encoding="utf-8") as f:
        return json.load(f)


def short_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def ids_hash(ids) -> str:
    packed = array("i", ids)  # the fixture hashes ids as little-endian int32
    if sys.byteorder == "big":
        packed.byteswap()
    return short_hash(packed.tobytes())


def first_mismatches(pairs, limit=3):
    return [(name, got[:20], want[:20]) for name, got, want in pairs if got != want][:limit]


# ---- ids equal Hugging Face's ---------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_tricky_and_random_strings_match_hugging_face(toks, reference, family):
    tok = toks[family]
    cases = reference["strings"]
    got = tok.encode_batch([c["text"] for c in cases])
    assert not first_mismatches((repr(c["text"][:40]), g, c[family]) for c, g in zip(cases, got))
    assert [tok.encode(c["text"]) for c in cases] == got
    # CodeGeeX reads the literal text <|extratoken_N|> as its token, so such text cannot come back verbatim
    round_trip = [(c["text"], ids) for c, ids in zip(cases, got)
                  if family == "codegen" or "<|extratoken_" not in c["text"]]
    assert len(round_trip) > len(cases) // 2
    assert [tok.decode(ids) for _, ids in round_trip] == [text for text, _ in round_trip]


@pytest.fixture(scope="module")
def stdlib_sources():
    """The fixture's stdlib files that this Python has with the same content: (fixture, names, texts)."""
    fixture = read_gz("stdlib.json.gz")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    names, texts = [], []
    for name, (content_hash, *_) in fixture["files"].items():
        path = stdlib / name
        data = path.read_bytes() if path.is_file() else b""
        if short_hash(data) == content_hash:
            names.append(name)
            try:
                texts.append(data.decode("utf-8"))
            except UnicodeDecodeError:  # a few encoding tests; the fixture read them as Latin-1 too
                texts.append(data.decode("latin-1"))
    return fixture, names, texts


@pytest.mark.parametrize("family", FAMILIES)
def test_standard_library_matches_hugging_face(toks, stdlib_sources, family):
    fixture, names, texts = stdlib_sources
    tok = toks[family]
    got = tok.encode_batch(texts)
    wrong = [name for name, ids in zip(names, got) if ids_hash(ids) != fixture["files"][name][COLUMN[family]]]
    assert not wrong, f"{len(wrong)} stdlib files tokenize differently from Hugging Face: {wrong[:5]}"
    not_round_trip = [name for name, ids, text in zip(names, got, texts) if tok.decode_bytes(ids) != text.encode()]
    assert not not_round_trip, f"decode(encode(x)) != x for {not_round_trip[:5]}"
    checked, total = len(names), len(fixture["files"])
    print(f"stdlib: checked {checked} of {total} files, skipped {total - checked} whose content differs")
    if checked < 0.95 * total:
        message = (f"only {checked} of {total} stdlib files match the fixture's Python {fixture['python']} "
                   f"(this is {platform.python_version()})")
        if platform.python_version() == fixture["python"]:
            pytest.fail(message)
        pytest.skip(message)


def test_humaneval_x_prompts_match_hugging_face(toks):
    directory = next((d for d in HUMANEVAL_X_DIRS if (d / "humaneval_python.jsonl.gz").is_file()), None)
    if directory is None:
        pytest.skip(f"HumanEval-X data not found in {[str(d) for d in HUMANEVAL_X_DIRS]}")
    fixture = read_gz("humaneval_x.json.gz")["prompts"]
    prompts = {}
    for language in ("python", "cpp", "java", "js", "go", "rust"):
        with gzip.open(directory / f"humaneval_{language}.jsonl.gz", "rt", encoding="utf-8") as f:
            prompts.update((row["task_id"], row["prompt"]) for row in map(json.loads, f))
    assert set(prompts) == set(fixture)
    assert all(short_hash(prompts[t].encode()) == fixture[t][0] for t in prompts), "HumanEval-X data changed"
    tasks = sorted(prompts)
    for family, tok in toks.items():
        got = tok.encode_batch([prompts[t] for t in tasks])
        wrong = [t for t, ids in zip(tasks, got) if ids_hash(ids) != fixture[t][COLUMN[family]]]
        assert not wrong, f"{family}: {len(wrong)} prompts differ from Hugging Face, e.g. {wrong[:5]}"
        assert all(tok.decode(ids) == prompts[t] for t, ids in zip(tasks, got))


def test_truncation_matches_hugging_face(toks, reference):
    tok = toks["codegen"]
    for case in reference["truncation"]:
        assert tok.decode(case["ids"], truncate_before_pattern=case["patterns"]) == case["expected"], case["patterns"]


# ---- behaviour of our own API ---------------------------------------------------------------------

def test_family_sizes_and_end_of_text(toks):
    assert (len(toks["codegen"]), len(toks["codegeex"])) == (50295, 50400)
    for family, tok in toks.items():
        assert tok.family == family
        assert tok.eos_token_id == tok.pad_token_id == tok.bos_token_id == 50256
        assert tok.special_token_ids == {"<|endoftext|>": 50256}
        assert tok.decode([50256]) == "<|endoftext|>"


def test_whitespace_tokens_of_each_family(toks):
    # 40 spaces: CodeGen takes the longest whitespace token first (31) then 9; CodeGeeX chunks of ten.
    assert toks["codegen"].encode(" " * 40) == [50257, 50279]
    assert toks["codegeex"].encode(" " * 40) == [50274] * 4
    assert toks["codegeex"].encode(" " * 23 + "x") == [50274, 50274, 50267, 87]
    assert toks["codegen"].encode("\t\t\t") == [50293]
    assert toks["codegeex"].encode("\t\t\t") == [197, 197, 197]


@pytest.mark.parametrize("family, size", [("codegen", 50295), ("codegeex", 50400)])
def test_decode_rejects_ids_past_the_vocabulary(toks, family, size):
    tok = toks[family]
    assert tok.decode([size - 1])  # the last real id is fine
    for bad in (size, 51199, -1):
        with pytest.raises(ValueError, match=str(bad)):
            tok.decode([0, bad])


def test_every_vocabulary_id_stands_for_distinct_bytes_covering_all_256(toks):
    pieces = [toks["codegen"].decode_bytes([i]) for i in range(50257)]
    assert len(set(pieces)) == 50257
    assert {bytes([b]) for b in range(256)} <= set(pieces)


def test_decode_bytes_keeps_characters_split_across_tokens(toks):
    tok = toks["codegen"]
    ids = tok.encode("😀")
    assert len(ids) == 2
    assert tok.decode_bytes(ids[:1]) + tok.decode_bytes(ids[1:]) == "😀".encode()
    assert tok.decode(ids[:1]) == "\ufffd"


@pytest.mark.parametrize("family, first", [("codegen", 50295), ("codegeex", 50400)])
def test_added_special_tokens_get_next_ids_and_stay_whole(family, first):
    tok = load_tokenizer(family)
    assert tok.fim_sentinels is None
    assert tok.add_special_tokens(FIM) == [first, first + 1, first + 2]
    assert (tok.fim_sentinels.prefix, tok.fim_sentinels.middle, tok.fim_sentinels.suffix) == (
        first, first + 1, first + 2)
    assert len(tok) == first + 3
    assert tok.add_special_tokens(FIM[::-1] + ["<|endoftext|>"]) == [first + 2, first + 1, first, 50256]
    assert len(tok) == first + 3
    assert tok.special_token_ids == {"<|endoftext|>": 50256, **{t: first + i for i, t in enumerate(FIM)}}
    prefix, suffix = "def f(x):\n    ", "\n    return y\n"
    text = f"<fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle>"
    ids = tok.encode(text)
    assert ids == [first] + tok.encode(prefix) + [first + 2] + tok.encode(suffix) + [first + 1]
    assert tok.decode(ids) == text


def test_add_special_tokens_rejects_text_that_is_already_a_token():
    tok = codegen_tokenizer()
    for bad in (["def"], [""], "<fim_prefix>", ["    "]):
        with pytest.raises((ValueError, TypeError)):
            tok.add_special_tokens(bad)
    with pytest.raises(ValueError, match="two spaces"):
        codegeex_tokenizer().add_special_tokens(["<a  b>"])
    assert len(tok) == 50295


@pytest.mark.parametrize("family", FAMILIES)
def test_save_then_load_gives_the_same_tokenizer(tmp_path, family):
    tok = load_tokenizer(family)
    tok.add_special_tokens(FIM)
    saved = tok.save(tmp_path / "tok")
    assert {p.name for p in saved.iterdir()} >= {"vocab.json", "merges.txt", "added_tokens.json", "tokenizer_config.json"}
    assert json.loads((saved / "tokenizer_config.json").read_text())["family"] == family
    loaded = load_tokenizer(saved)
    text = "<fim_prefix>class A:\n        x = '  é'\t\t<|endoftext|><fim_middle>"
    assert (loaded.family, len(loaded), loaded.special_token_ids) == (family, len(tok), tok.special_token_ids)
    assert loaded.encode(text) == tok.encode(text)
    loaded.save(saved)  # saving over its own files leaves them intact
    assert load_tokenizer(str(saved)).encode(text) == tok.encode(text)


def test_load_tokenizer_errors_name_the_place(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_tokenizer(missing)
    (tmp_path / "tokenizer_config.json").write_text('{"tokenizer_class": "GPT2Tokenizer"}')
    with pytest.raises(ValueError, match="family"):
        load_tokenizer(tmp_path)
    saved = codegen_tokenizer().save(tmp_path / "saved")
    (saved / "tokenizer_config.json").write_text('{"family": "codegen", "added_special_tokens": {"<x>": 60000}}')
    with pytest.raises(ValueError, match="60000"):
        load_tokenizer(saved)
    (saved / "merges.txt").unlink()
    with pytest.raises(FileNotFoundError, match="merges.txt"):
        load_tokenizer(saved)


def test_encode_rejects_non_text(toks):
    with pytest.raises(TypeError):
        toks["codegen"].encode(b"bytes")
    with pytest.raises(TypeError):
        toks["codegen"].encode_batch("one string")


def test_bad_truncation_pattern_is_named(toks):
    with pytest.raises(ValueError, match=r"\(unclosed"):
        toks["codegen"].decode([64], truncate_before_pattern=["(unclosed"])


def test_importing_the_tokenizer_loads_neither_paddle_nor_transformers():
    code = ("import sys, codegen.tokenizer; "
            "print(sorted(m for m in ('paddle', 'paddlenlp', 'torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---- our own BPE ("bpe" family, tools/train_tokenizer.py) ---------------------------------------

@pytest.fixture(scope="module")
def own_bpe(tmp_path_factory):
    """A 600-token BPE trained on this repository's model code, as tools/train_tokenizer.py trains the
    shipped model's."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "tools"))
    from train_tokenizer import train
    root = tmp_path_factory.mktemp("bpe")
    corpus = root / "train.jsonl"
    sources = sorted((Path(__file__).parents[1] / "codegen" / "models").glob("*.py"))
    corpus.write_text("".join(json.dumps({"code": p.read_text()}) + "\n" for p in sources))
    return load_tokenizer(train(corpus, root / "tok", vocab_size=600))


def test_own_bpe_puts_end_of_text_first_and_the_fim_sentinels_last(own_bpe):
    assert len(own_bpe) == 600
    assert own_bpe.eos_token_id == own_bpe.pad_token_id == 0
    assert own_bpe.encode("<|endoftext|>") == [0]
    assert [own_bpe.special_token_ids[t] for t in FIM] == [597, 598, 599]
    assert own_bpe.encode("a<fim_middle>b")[1] == 598


def test_own_bpe_learns_the_corpus_and_round_trips_any_text(own_bpe):
    line = "        return self.weight\n"
    # indentation and frequent words become single tokens, unlike bytes
    assert len(own_bpe.encode(line)) < len(line) / 2
    for text in ["def f(x):\n\treturn x  # ünïcödé 🐍\r\n", "   \n\n  trailing   ", "\x00\x7f€", ""]:
        assert own_bpe.decode(own_bpe.encode(text)) == text


def test_own_bpe_saves_and_loads_back_with_the_same_ids(own_bpe, tmp_path):
    text = (Path(__file__).parents[1] / "codegen" / "tokenizer.py").read_text()
    again = load_tokenizer(own_bpe.save(tmp_path / "copy"))
    assert again.encode(text) == own_bpe.encode(text)
    assert again.special_token_ids == own_bpe.special_token_ids


def test_the_gpt2_families_still_insist_on_their_end_of_text_id(tmp_path):
    tok = codegen_tokenizer().save(tmp_path / "t")
    vocab = json.loads((tok / "vocab.json").read_text())
    vocab["<|endoftext|>"], vocab["!"] = vocab["!"], vocab["<|endoftext|>"]
    (tok / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(ValueError, match="must be id 50256"):
        load_tokenizer(tok)
