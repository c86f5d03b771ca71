"""Train the byte-level BPE tokenizer of the small shipped model on the training corpus.

    python tools/train_tokenizer.py --corpus /tmp/corpus/train.jsonl --out /tmp/tokenizer --vocab-size 8192

The vocabulary is GPT-2's kind (same pre-tokenizer, so runs of indentation become single tokens as the
corpus warrants), with `<|endoftext|>` as id 0 and the three fill-in-the-middle sentinels as the last ids,
so a model trained with `run_clm.py --fim_rate` needs no vocabulary growth. Writes a directory that
`codegen.load_tokenizer` reads (family "bpe"). Deterministic for a given corpus and vocabulary size.
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from codegen.tokenizer import END_OF_TEXT, load_tokenizer  # noqa: E402
from codegen.tokenizer import FIM_TOKENS  # noqa: E402


def read_corpus(path: Path):
    """The "code" of each line of a jsonl file; a bad line stops with file:line and the reason."""
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            try:
                code = json.loads(line)["code"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise SystemExit(f"{path}:{number}: expected a JSON object with a \"code\" string ({e})")
            if not isinstance(code, str):
                raise SystemExit(f"{path}:{number}: \"code\" must be a string, got {type(code).__name__}")
            yield code


def train(corpus: Path, out: Path, vocab_size: int) -> Path:
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(FIM_TOKENS), special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(read_corpus(corpus), trainer=trainer)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        backend.model.save(tmp)
        vocab = json.loads((Path(tmp) / "vocab.json").read_text(encoding="utf-8"))
        merges = (Path(tmp) / "merges.txt").read_text(encoding="utf-8")
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, sort_keys=False) + "\n", encoding="utf-8")
    (out / "merges.txt").write_text(merges, encoding="utf-8")
    (out / "added_tokens.json").write_text("{}\n", encoding="utf-8")
    config = {"family": "bpe", "eos_token": END_OF_TEXT, "bos_token": END_OF_TEXT, "pad_token": END_OF_TEXT,
              "added_special_tokens": {}}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
    tokenizer = load_tokenizer(out)
    tokenizer.add_special_tokens(list(FIM_TOKENS))
    tokenizer.save(out)
    if len(tokenizer) != vocab_size:
        raise SystemExit(f"the corpus yields only {len(tokenizer)} tokens, fewer than --vocab-size {vocab_size}")
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True, help="train.jsonl from tools/build_corpus.py")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--vocab-size", type=int, default=8192)
    args = parser.parse_args()
    if not args.corpus.is_file():
        parser.error(f"--corpus {args.corpus}: no such file")
    if args.vocab_size < 257 + len(FIM_TOKENS):
        parser.error(f"--vocab-size must hold the 256 bytes, end-of-text and the FIM sentinels, got {args.vocab_size}")
    out = train(args.corpus, args.out, args.vocab_size)
    tokenizer = load_tokenizer(out)
    n_tokens = sum(len(ids) for ids in tokenizer.encode_batch(list(read_corpus(args.corpus))))
    print(f"wrote {out}: {len(tokenizer)} tokens; the corpus is {n_tokens} tokens")


if __name__ == "__main__":
    main()
