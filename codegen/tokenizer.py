"""Byte-level BPE tokenizers for CodeGen, CodeGeeX and our own models, built on the `tokenizers` Rust library.

CodeGen and CodeGeeX use GPT-2's vocabulary and merges and differ only in how runs of whitespace reach the model:

- CodeGen has 38 added tokens for runs of 2..31 spaces and 2..9 tabs. Like every added token they are cut out
  of the text before BPE sees it, leftmost match first and the longest one there, so 40 spaces become the
  31-space token then the 9-space token. `<|endoftext|>` in the text is the end-of-text token.
- CodeGeeX first rewrites each run of 2..10 spaces as the text `<|extratoken_{8+n}|>` (longer runs in chunks of
  ten, a lone leftover space stays a space); those names are its added tokens. Tabs and newlines stay plain BPE.
- "bpe" is a vocabulary of its own (tools/train_tokenizer.py) with GPT-2's pre-tokenizer and no whitespace
  tokens: `<|endoftext|>` is in the vocabulary and its id is wherever the vocabulary puts it.

The added tokens go to the Rust library's added-vocabulary splitter with the flags Hugging Face's loader gives
them (whitespace and extra tokens: non-special, normalized, no lstrip/rstrip; `<|endoftext|>` and tokens from
`add_special_tokens`: special), so the split is the one of Hugging Face's CodeGenTokenizer / GPT2Tokenizer
(checked against transformers 4.46 (pure Python) and 5.23 on the whole standard library). With no normalizer,
"normalized" only picks which of the splitter's two passes matches a token, and `<|endoftext|>` cannot overlap
any whitespace or extra token, so its pass does not matter.

Decoding maps each id to the exact bytes it stands for, so `decode(encode(text)) == text` for any text, with one
exception inherited from CodeGeeX: text that literally contains `<|extratoken_N|>` is read as that token, and
N = 10..18 decode to spaces. Ids at or past len(tokenizer) (the padding rows of a model's embedding) raise
ValueError in decode.
"""
import json
import re
import shutil
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from tokenizers import AddedToken
from tokenizers import Tokenizer as _RustTokenizer
from tokenizers import models, pre_tokenizers

FAMILIES = ("codegen", "codegeex", "bpe")
PACKAGED = ("codegen", "codegeex")
ASSETS = Path(__file__).parent / "assets" / "tokenizers"
END_OF_TEXT = "<|endoftext|>"
END_OF_TEXT_ID = 50256

VOCAB_FILE, MERGES_FILE, ADDED_TOKENS_FILE, CONFIG_FILE = (
    "vocab.json", "merges.txt", "added_tokens.json", "tokenizer_config.json")

# Fill-in-the-middle sentinels, in the order training adds them to a vocabulary that lacks them
FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX = "<fim_prefix>", "<fim_middle>", "<fim_suffix>"
FIM_TOKENS = (FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX)

# CodeGeeX: a run of n spaces (2 <= n <= 10) is written as this added token before encoding.
CODEGEEX_LONGEST_SPACE_RUN = 10
CODEGEEX_SPACE_RUNS = {f"<|extratoken_{8 + n}|>": n for n in range(2, CODEGEEX_LONGEST_SPACE_RUN + 1)}


@dataclass(frozen=True)
class FimSentinels:
    prefix: int
    middle: int
    suffix: int


class Tokenizer:
    """A CodeGen, CodeGeeX or own ("bpe") tokenizer. Build one with `load_tokenizer`, `codegen_tokenizer` or
    `codegeex_tokenizer`."""

    def __init__(self, family: str, vocab_file: Path, merges_file: Path, added_tokens_file: Path,
                 extra_special_tokens: dict[str, int] | None = None):
        if family not in FAMILIES:
            raise ValueError(f"unknown tokenizer family {family!r}; expected one of {', '.join(FAMILIES)}")
        self.family = family
        self._files = {VOCAB_FILE: Path(vocab_file), MERGES_FILE: Path(merges_file),
                       ADDED_TOKENS_FILE: Path(added_tokens_file)}
        self._backend = _build_backend(self._files[VOCAB_FILE], self._files[MERGES_FILE])
        _add_family_tokens(self._backend, self._files[ADDED_TOKENS_FILE])
        self._backend.add_special_tokens([AddedToken(END_OF_TEXT, normalized=False, special=True)])
        self._special = {END_OF_TEXT: self._backend.token_to_id(END_OF_TEXT)}
        if family != "bpe" and self._special[END_OF_TEXT] != END_OF_TEXT_ID:
            raise ValueError(f"{vocab_file}: {END_OF_TEXT} must be id {END_OF_TEXT_ID} in the {family} vocabulary")
        self._bytes_by_id_cache = None
        if extra_special_tokens:
            expected = sorted(extra_special_tokens, key=extra_special_tokens.get)
            got = self.add_special_tokens(expected)
            if got != [extra_special_tokens[t] for t in expected]:
                raise ValueError(f"special tokens {expected} should have ids "
                                 f"{[extra_special_tokens[t] for t in expected]} but got {got}")

    @property
    def eos_token_id(self) -> int:
        return self._special[END_OF_TEXT]

    pad_token_id = bos_token_id = eos_token_id

    def __len__(self) -> int:
        return self._backend.get_vocab_size(with_added_tokens=True)

    def __repr__(self) -> str:
        return f"Tokenizer(family={self.family!r}, size={len(self)})"

    @property
    def special_token_ids(self) -> dict[str, int]:
        """Special token text -> id: `<|endoftext|>` and whatever `add_special_tokens` added."""
        return dict(self._special)

    @property
    def fim_sentinels(self) -> FimSentinels | None:
        """The fill-in-the-middle sentinel ids, or None if this vocabulary cannot infill."""
        if not all(name in self._special for name in FIM_TOKENS):
            return None
        return FimSentinels(*(self._special[name] for name in FIM_TOKENS))

    # ---- encoding -------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        return self._backend.encode(self._rewrite(_check_text(text)), add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encode many texts at once; the Rust library spreads them over all cores."""
        if isinstance(texts, str):
            raise TypeError("encode_batch takes a list of strings; use encode for one string")
        prepared = [self._rewrite(_check_text(text)) for text in texts]
        return [e.ids for e in self._backend.encode_batch_fast(prepared, add_special_tokens=False)]

    def _rewrite(self, text: str) -> str:
        if self.family == "codegeex":
            # Longest first, so a run of 23 spaces becomes 10 + 10 + 3.
            for token, n in reversed(CODEGEEX_SPACE_RUNS.items()):
                text = text.replace(" " * n, token)
        return text

    # ---- decoding -------------------------------------------------------------------------------

    def decode_bytes(self, ids) -> bytes:
        """The exact UTF-8 bytes the ids stand for (a cut may end inside a character).

        Ids outside 0..len(self)-1 (such as the padding rows of a model's embedding) raise ValueError.
        """
        table = self._bytes_by_id()
        ids = list(ids)
        if ids and (min(ids) < 0 or max(ids) >= len(table)):
            bad = next(i for i in ids if not 0 <= i < len(table))
            raise ValueError(f"token id {bad} is not in the {self.family} tokenizer (valid ids are "
                             f"0..{len(table) - 1}; a model's embedding rows past the tokenizer's length stand for "
                             f"no text)")
        return b"".join([table[i] for i in ids])

    def decode(self, ids, truncate_before_pattern: list[str] | None = None) -> str:
        """Text for the ids; bytes that are not valid UTF-8 become U+FFFD.

        With `truncate_before_pattern` (regular expressions, matched with re.MULTILINE) the text is cut the way
        Hugging Face's CodeGenTokenizer does: at the second line starting with `print`, then at the second line
        starting with `def`, then before the earliest match of any of the patterns.
        """
        text = self.decode_bytes(ids).decode("utf-8", "replace")
        if truncate_before_pattern:
            text = truncate_completion(text, truncate_before_pattern)
        return text

    @property
    def longest_token_bytes(self) -> int:
        """The most bytes of text one token stands for: n characters of text always make at least
        n / longest_token_bytes tokens."""
        return max(len(token) for token in self._bytes_by_id())

    def _bytes_by_id(self) -> list[bytes]:
        # Built on first decode: it costs about as much as a few long encodes.
        if self._bytes_by_id_cache is None:
            table = [b""] * len(self)
            for token, i in self._backend.get_vocab(with_added_tokens=False).items():
                table[i] = token.translate(_BYTE_LEVEL_TO_LATIN1).encode("latin-1")
            for i, added in self._backend.get_added_tokens_decoder().items():
                if self.family == "codegeex" and added.content in CODEGEEX_SPACE_RUNS:
                    table[i] = b" " * CODEGEEX_SPACE_RUNS[added.content]
                else:
                    table[i] = added.content.encode("utf-8")
            self._bytes_by_id_cache = table
        return self._bytes_by_id_cache

    # ---- token healing ----------------------------------------------------------------------------

    def heal(self, ids: list[int]) -> tuple[list[int], str]:
        r"""(prompt ids, text to regenerate): a prompt ending in whitespace, minus that last token.

        The "bpe" vocabulary merges a newline with the indentation after it, so in training a lone
        `\n` token is only ever followed by an unindented line: a prompt ending in `\n` (a docstring,
        a finished line) would make the model leave the function. Generation instead regenerates that
        text, free to extend it ("\n" -> "\n    "), and reports only what follows it. The GPT-2
        families cut whitespace runs out as tokens of their own, so their prompts are left alone.
        """
        if self.family != "bpe" or len(ids) < 2:
            return list(ids), ""
        last = self.decode_bytes(ids[-1:])
        if not last or last.strip(b" \t\r\n"):
            return list(ids), ""
        return list(ids[:-1]), last.decode("ascii")

    def ids_starting_with(self, text: str) -> list[int]:
        """Ids of the tokens whose text starts with `text` (the choices for a healed prompt's next token)."""
        prefix = text.encode("utf-8")
        return [i for i, token in enumerate(self._bytes_by_id()) if token.startswith(prefix)]

    # ---- special tokens and files -----------------------------------------------------------------

    def add_special_tokens(self, tokens: list[str]) -> list[int]:
        """Add tokens (e.g. fill-in-the-middle sentinels) that encode always keeps whole; returns their ids.

        New tokens get the next ids from len(self) on, in order; tokens that are already special keep their id.
        """
        if isinstance(tokens, str):
            raise TypeError("add_special_tokens takes a list of strings, not one string")
        new = [t for t in dict.fromkeys(tokens) if t not in self._special]
        for token in new:
            if not isinstance(token, str) or not token:
                raise ValueError(f"a special token must be a non-empty string, got {token!r}")
            existing = self._backend.token_to_id(token)
            if existing is not None:
                raise ValueError(f"{token!r} is already token {existing} of the {self.family} tokenizer; "
                                 f"a special token must be new text")
            if self.family == "codegeex" and "  " in token:
                raise ValueError(f"{token!r}: CodeGeeX rewrites runs of spaces before matching, "
                                 f"so a special token cannot contain two spaces in a row")
        if new:
            self._backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in new])
            self._special.update((t, self._backend.token_to_id(t)) for t in new)
            self._bytes_by_id_cache = None
        return [self._special[t] for t in tokens]

    def save(self, directory) -> Path:
        """Write a self-contained tokenizer directory that `load_tokenizer` reads back; returns its path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, source in self._files.items():
            target = directory / name
            if not (target.exists() and target.samefile(source)):
                shutil.copyfile(source, target)
        config = {
            "family": self.family,
            "eos_token": END_OF_TEXT, "bos_token": END_OF_TEXT, "pad_token": END_OF_TEXT,
            "added_special_tokens": {t: i for t, i in self._special.items() if t != END_OF_TEXT},
        }
        text = json.dumps(config, indent=1, ensure_ascii=False) + "\n"
        (directory / CONFIG_FILE).write_text(text, encoding="utf-8")
        return directory


def truncate_completion(text: str, patterns: list[str]) -> str:
    """Cut generated code where it stops being the asked-for function (see Tokenizer.decode)."""
    if isinstance(patterns, str):
        raise TypeError("truncate_before_pattern takes a list of regular expressions, not one string")
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern, re.MULTILINE))
        except re.error as e:
            raise ValueError(f"truncate_before_pattern {pattern!r} is not a valid regular expression: {e}") from None
    for line_start in ("^print", "^def"):
        second = list(islice(re.finditer(line_start, text, re.MULTILINE), 1, 2))
        if second:
            text = text[:second[0].start()]
    cuts = [m.start() for m in (p.search(text) for p in compiled) if m]
    return text[:min(cuts)] if cuts else text


def load_tokenizer(name_or_path) -> Tokenizer:
    """'codegen' or 'codegeex' for the packaged GPT-2 tokenizers, or a directory written by Tokenizer.save().

    The two names win over directories of the same name; write './codegen' to mean a directory.
    """
    if isinstance(name_or_path, str) and name_or_path in PACKAGED:
        return _packaged(name_or_path)
    directory = Path(name_or_path)
    config_file = directory / CONFIG_FILE
    if not config_file.is_file():
        raise FileNotFoundError(f"no tokenizer at {directory.resolve()}: {config_file.name} not found there "
                                f"(expected a directory written by Tokenizer.save(), or the name 'codegen' or "
                                f"'codegeex')")
    config = _read_json(config_file)
    family = config.get("family") if isinstance(config, dict) else None
    if family not in FAMILIES:
        raise ValueError(f"{config_file}: field 'family' must be one of {', '.join(FAMILIES)}, got {family!r}")
    extra = config.get("added_special_tokens", {})
    if not isinstance(extra, dict) or not all(isinstance(i, int) for i in extra.values()):
        raise ValueError(f"{config_file}: field 'added_special_tokens' must map token text to an integer id")
    files = [directory / name for name in (VOCAB_FILE, MERGES_FILE, ADDED_TOKENS_FILE)]
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"tokenizer directory {directory.resolve()} lacks {file.name}")
    return Tokenizer(family, *files, extra_special_tokens=extra)


def codegen_tokenizer() -> Tokenizer:
    return _packaged("codegen")


def codegeex_tokenizer() -> Tokenizer:
    return _packaged("codegeex")


def _packaged(family: str) -> Tokenizer:
    return Tokenizer(family, ASSETS / "gpt2-bpe" / VOCAB_FILE, ASSETS / "gpt2-bpe" / MERGES_FILE,
                     ASSETS / family / ADDED_TOKENS_FILE)


def _build_backend(vocab_file: Path, merges_file: Path) -> _RustTokenizer:
    try:
        model = models.BPE.from_file(str(vocab_file), str(merges_file))
    except Exception as e:  # the Rust loader raises a bare Exception for unreadable or malformed files
        raise ValueError(f"cannot read BPE files {vocab_file} and {merges_file}: {e}") from None
    backend = _RustTokenizer(model)
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    return backend


def _add_family_tokens(backend: _RustTokenizer, file: Path):
    """Add the family's whitespace / extra tokens, whose ids must follow the vocabulary without gaps."""
    tokens = _read_json(file)
    first = backend.get_vocab_size()
    valid = isinstance(tokens, dict) and all(isinstance(i, int) for i in tokens.values())
    ordered = sorted(tokens, key=tokens.get) if valid else []
    if not valid or [tokens[t] for t in ordered] != list(range(first, first + len(ordered))):
        raise ValueError(f"{file}: expected a JSON object mapping token text to ids {first}, {first + 1}, ... "
                         f"without gaps")
    backend.add_tokens([AddedToken(content, normalized=True, special=False) for content in ordered])
    clashes = [t for t in ordered if backend.token_to_id(t) != tokens[t]]
    if clashes:
        raise ValueError(f"{file}: {clashes[0]!r} is already in the vocabulary as id {backend.token_to_id(clashes[0])}")


def _read_json(file: Path):
    try:
        return json.loads(Path(file).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}:{e.lineno}: not valid JSON ({e.msg})") from None


def _check_text(text) -> str:
    if not isinstance(text, str):
        raise TypeError(f"expected text as str, got {type(text).__name__}")
    return text


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's vocabulary spells each byte as one printable character: the printable Latin-1 bytes as
    themselves, every other byte as chr(256 + k) for the k-th such byte. Returns character -> byte."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    byte_of_char = {}
    shifted = 256
    for byte in range(256):
        if byte in printable:
            byte_of_char[chr(byte)] = byte
        else:
            byte_of_char[chr(shifted)] = byte
            shifted += 1
    return byte_of_char


# str.translate table turning a vocabulary entry into Latin-1 text whose encoding is the entry's bytes
_BYTE_LEVEL_TO_LATIN1 = {ord(char): byte for char, byte in _byte_level_alphabet().items()}
