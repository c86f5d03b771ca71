"""Regenerate the Hugging Face reference fixtures for the CodeGen parity tests.

Dev tooling only: needs torch==2.13.0 and transformers, which the package and
its tests never import. Run from the repo root:

    python -m venv /tmp/refvenv && /tmp/refvenv/bin/pip install torch==2.13.0 transformers safetensors
    /tmp/refvenv/bin/python tools/make_reference_fixtures.py

Writes tests/fixtures/hf-codegen-tiny/ (a `save_pretrained` checkpoint with the
real vocabulary size, fp16 safetensors), tests/fixtures/hf-codegen-tiny-bin/ (the
same architecture with a small vocabulary, saved as a torch.save pytorch_model.bin) and
tests/fixtures/codegen_reference.npz with transformers' outputs.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import CodeGenConfig, CodeGenForCausalLM

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
sys.path.insert(0, str(ROOT))
from codegen.tokenizer import codegen_tokenizer  # noqa: E402  (pure Python, no paddle)

# Prompts with different lengths, exercised as one left-padded batch.
PROMPTS = ["def fib(n):", "class Stack:\n    def push(self, x):", "import os\n# list files\n"]
NEW_TOKENS = 12


def tiny_config(vocab_size: int) -> CodeGenConfig:
    # initializer_range well above the default 0.02 makes logits peaked enough that
    # greedy choices are not decided by float rounding
    return CodeGenConfig(vocab_size=vocab_size, n_positions=128, n_ctx=128, n_embd=32, n_layer=2, n_head=4,
                         rotary_dim=4, initializer_range=0.3, bos_token_id=50256, eos_token_id=50256,
                         tie_word_embeddings=False)


def build(vocab_size: int, seed: int) -> CodeGenForCausalLM:
    torch.manual_seed(seed)
    model = CodeGenForCausalLM(tiny_config(vocab_size)).eval()
    with torch.no_grad():  # random LayerNorm and bias values so every parameter matters in the comparison
        for name, p in model.named_parameters():
            if name.endswith("bias") or "ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
        # weights rounded to fp16 so the fixture can be stored at half size and still be
        # exact; only parameters, as the rotary table buffer is never stored
        for p in model.parameters():
            p.copy_(p.half().float())
    return model


def left_padded(batch: list[list[int]], pad: int):
    width = max(map(len, batch))
    ids = np.full((len(batch), width), pad, dtype=np.int64)
    mask = np.zeros((len(batch), width), dtype=np.int64)
    for i, row in enumerate(batch):
        ids[i, width - len(row):] = row
        mask[i, width - len(row):] = 1
    return ids, mask


def forward(model, ids, mask):
    position_ids = np.clip(mask.cumsum(-1) - 1, 0, None)
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                    position_ids=torch.from_numpy(position_ids))
    return out.logits.float().numpy()


def greedy(model, prompt_ids: list[int], vocab_in_use: int) -> tuple[list[int], float]:
    """transformers' own greedy generate, and the smallest top-1/top-2 logit margin it met.

    The embedding's padding rows past the tokenizer stand for no text; a trained model
    never picks them, a random one may, so they are suppressed as codegen does.
    """
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=NEW_TOKENS, do_sample=False,
                             suppress_tokens=list(range(vocab_in_use, model.config.vocab_size)),
                             output_scores=True, return_dict_in_generate=True, pad_token_id=50256,
                             min_new_tokens=NEW_TOKENS)
    margins = [float(torch.topk(s[0], 2).values[0] - torch.topk(s[0], 2).values[1]) for s in out.scores]
    return out.sequences[0, len(prompt_ids):].tolist(), min(margins)


def main():
    tok = codegen_tokenizer()
    encoded = [tok.encode(p) for p in PROMPTS]
    ids, mask = left_padded(encoded, pad=tok.pad_token_id)

    model = build(vocab_size=51200, seed=0)
    logits = forward(model, ids, mask)
    greedy_ids, margins = zip(*(greedy(model, p, len(tok)) for p in encoded))
    assert min(margins) > 1e-3, f"greedy margins too small to be a fair reference: {margins}"
    model.half().save_pretrained(FIXTURES / "hf-codegen-tiny")

    small = build(vocab_size=1000, seed=1)
    # transformers 5 only writes safetensors; older releases wrote exactly this torch.save zip
    (FIXTURES / "hf-codegen-tiny-bin").mkdir(exist_ok=True)
    small.config.save_pretrained(FIXTURES / "hf-codegen-tiny-bin")
    torch.save(small.state_dict(), FIXTURES / "hf-codegen-tiny-bin" / "pytorch_model.bin")
    rng = np.random.default_rng(0)
    small_ids = rng.integers(0, 1000, size=(2, 9))
    small_mask = np.ones_like(small_ids)
    small_mask[1, :3] = 0  # second row left-padded by three
    small_logits = forward(small, small_ids, small_mask)

    np.savez_compressed(
        FIXTURES / "codegen_reference.npz",
        # all 51,200 columns at each row's last position; elsewhere the first 2,048 keep the file small
        input_ids=ids, attention_mask=mask, logits_head=logits[..., :2048], logits_last=logits[:, -1],
        greedy_new_ids=np.array(greedy_ids, dtype=np.int64),
        bin_input_ids=small_ids, bin_attention_mask=small_mask, bin_logits=small_logits)
    (FIXTURES / "codegen_reference.json").write_text(json.dumps(
        {"prompts": PROMPTS, "new_tokens": NEW_TOKENS, "torch": torch.__version__,
         "transformers": __import__("transformers").__version__,
         "min_greedy_margin": min(margins)}, indent=1) + "\n")
    print("wrote fixtures; min greedy margin", min(margins))


if __name__ == "__main__":
    main()
