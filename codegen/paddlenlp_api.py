"""PaddleNLP's low-level CodeGen API, on codegen's predictor: code written against
`paddlenlp.transformers.CodeGenTokenizer` / `CodeGenForCausalLM` runs with only its import changed.

    tokenizer = CodeGenTokenizer.from_pretrained(name)     # names resolve as load_model's do
    model = CodeGenForCausalLM.from_pretrained(name)
    inputs = tokenizer([prompt])                            # {"input_ids": [[...]], "attention_mask": [[...]]}
    ids, scores = model.generate(paddle.to_tensor(inputs["input_ids"]), max_length=128)
    tokenizer.decode(ids[0], skip_special_tokens=True, truncate_before_pattern=[...])

`generate` is a thin translation onto `Predictor.generate`, the decode loop everything else uses. It
returns what PaddleNLP's returns: the new token ids [rows, longest], a row ended by end-of-text keeping
that token and padded after it with the pad token, and a score per row [rows, 1] (greedy and sampling:
the mean log-probability of the row's tokens; beam search: the beam's score).
"""
from __future__ import annotations

import numpy as np

from .generation import GenerationConfig


CLASS_PREFIX = {"codegen": "CodeGen", "codegeex": "CodeGeeX"}


def _checkpoint_dir(name_or_path, model_type: str, kind: str):
    """The checkpoint directory of `name_or_path`, which must hold a `model_type` model."""
    from .checkpoints import read_config, resolve_model_dir
    model_dir = resolve_model_dir(name_or_path)
    found = read_config(model_dir)["model_type"]
    if found != model_type:
        raise ValueError(f"{model_dir} holds a {found} checkpoint: load it with {CLASS_PREFIX[found]}{kind}")
    return model_dir


def _as_rows(values, name: str) -> np.ndarray:
    """A paddle Tensor, numpy array or nested list as an int64 array [rows, length]."""
    array = np.asarray(values.numpy() if hasattr(values, "numpy") else values)
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must be integers of shape [batch_size, length], got {array.dtype} "
                         f"of shape {list(array.shape)}")
    return array.astype(np.int64)


class CodeGenTokenizer:
    """`tokenizer(texts)` and `tokenizer.decode(ids)` as PaddleNLP's CodeGenTokenizer has them."""

    MODEL_TYPE = "codegen"

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.pad_token_id = tokenizer.pad_token_id
        self.eos_token_id = tokenizer.eos_token_id

    @classmethod
    def from_pretrained(cls, name_or_path):
        from .tokenizer import load_tokenizer
        return cls(load_tokenizer(_checkpoint_dir(name_or_path, cls.MODEL_TYPE, "Tokenizer")))

    def __len__(self) -> int:
        return len(self.tokenizer)

    def __call__(self, text, padding: bool = False, return_tensors: str | None = None, truncation: bool = False):
        """{"input_ids", "attention_mask"} for a string (flat lists) or a list of strings (a list per text).

        `padding=True` pads a batch on the left, where generation needs it. `truncation` is accepted
        and changes nothing: generation left-truncates a prompt that does not fit (with a warning).
        `return_tensors` "pd" or "np" gives paddle or numpy int64 arrays (texts of one length, or padded).
        """
        if return_tensors not in (None, "pd", "np"):
            raise ValueError(f"return_tensors must be 'pd', 'np' or None, got {return_tensors!r}")
        single = isinstance(text, str)
        texts = [text] if single else text
        if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
            raise ValueError("text must be a string or a list of strings")
        ids = [self.tokenizer.encode(t) for t in texts]
        longest = max(map(len, ids), default=0) if padding else 0
        input_ids = [[self.pad_token_id] * (longest - len(row)) + row for row in ids]
        mask = [[0] * (longest - len(row)) + [1] * len(row) for row in ids]
        encoded = {"input_ids": input_ids[0] if single else input_ids, "attention_mask": mask[0] if single else mask}
        if return_tensors is None:
            return encoded
        if len({len(row) for row in ids}) > 1 and not padding:
            raise ValueError("texts of different lengths cannot form one tensor: pass padding=True")
        if return_tensors == "np":
            return {k: np.asarray(v, dtype=np.int64) for k, v in encoded.items()}
        import paddle
        return {k: paddle.to_tensor(np.asarray(v, dtype=np.int64)) for k, v in encoded.items()}

    def decode(self, token_ids, skip_special_tokens: bool = False, spaces_between_special_tokens: bool = True,
               truncate_before_pattern: list[str] | None = None) -> str:
        """The text of `token_ids` (a list, numpy array or paddle Tensor).

        `truncate_before_pattern` cuts as PaddleNLP's does (see Tokenizer.decode).
        `spaces_between_special_tokens` is accepted for PaddleNLP's signature: decoding here is
        byte-exact and never inserts spaces.
        """
        ids = _as_rows(token_ids, "token_ids").reshape(-1).tolist()
        if skip_special_tokens:
            special = set(self.tokenizer.special_token_ids.values())
            ids = [i for i in ids if i not in special]
        return self.tokenizer.decode(ids, truncate_before_pattern=truncate_before_pattern)


class CodeGeeXTokenizer(CodeGenTokenizer):
    MODEL_TYPE = "codegeex"


class CodeGenForCausalLM:
    """`model.generate(input_ids, ...)` as PaddleNLP's CodeGenForCausalLM has it, through a Predictor."""

    MODEL_TYPE = "codegen"

    def __init__(self, model_dir, **load_options):
        self.model_dir = model_dir
        self.load_options = load_options
        self.predictor = self._load(load_options)

    @classmethod
    def from_pretrained(cls, name_or_path, *, device: str | None = None, quantize: str | None = None,
                        use_fast: bool | None = None, use_fp16_decoding: bool = False):
        return cls(_checkpoint_dir(name_or_path, cls.MODEL_TYPE, "ForCausalLM"), device=device, quantize=quantize,
                   use_fast=use_fast, use_fp16_decoding=use_fp16_decoding)

    def _load(self, options: dict):
        from .predictor import Predictor
        return Predictor(self.model_dir, **options)

    def eval(self):
        # PaddleNLP code calls model.eval() before generating; this model only ever infers
        return self

    def generate(self, input_ids, attention_mask=None, max_length: int = 20, min_length: int = 0,
                 decode_strategy: str = "greedy_search", temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, repetition_penalty: float = 1.0, num_beams: int = 1,
                 length_penalty: float = 0.0, early_stopping: bool = False, num_return_sequences: int = 1,
                 use_fast: bool | None = None, use_faster: bool | None = None,
                 use_fp16_decoding: bool | None = None, seed: int | None = None):
        """(new token ids [rows, longest] int64, scores [rows, 1] float32) as paddle Tensors.

        `max_length`/`min_length` count new tokens, as in PaddleNLP. Rows are prompt by prompt, then
        `num_return_sequences` per prompt. `use_fast`/`use_faster` and `use_fp16_decoding` pick the
        weights the model runs with: a change from what is loaded reloads it once.
        """
        import paddle

        self._switch_weights(use_fast if use_fast is not None else use_faster, use_fp16_decoding)
        config = GenerationConfig(
            max_new_tokens=max_length, min_new_tokens=min_length, decode_strategy=decode_strategy,
            temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty,
            # PaddleNLP reads num_beams only for beam search
            num_beams=num_beams if decode_strategy == "beam_search" else 1, length_penalty=length_penalty,
            early_stopping=early_stopping, num_return_sequences=num_return_sequences, seed=seed).validate()
        results = self.predictor.generate(self._prompts(input_ids, attention_mask), config)
        eos, pad = self.predictor.tokenizer.eos_token_id, self.predictor.tokenizer.pad_token_id
        rows, scores = [], []
        for sequences in results:
            for seq in sequences:
                # no stop strings here, so a 'stop' is the end-of-text token, which PaddleNLP's rows keep
                ended = [eos] if seq.finish_reason == "stop" else []
                rows.append(seq.token_ids + ended)
                beam = config.decode_strategy == "beam_search"
                scores.append(seq.score if beam else seq.score / max(len(rows[-1]), 1))
        longest = max(len(row) for row in rows)
        ids = np.asarray([row + [pad] * (longest - len(row)) for row in rows], dtype=np.int64)
        return paddle.to_tensor(ids), paddle.to_tensor(np.asarray(scores, dtype=np.float32)[:, None])

    def _prompts(self, input_ids, attention_mask) -> list[list[int]]:
        ids = _as_rows(input_ids, "input_ids")
        mask = np.ones_like(ids) if attention_mask is None else _as_rows(attention_mask, "attention_mask")
        if mask.shape != ids.shape or not np.isin(mask, (0, 1)).all():
            raise ValueError(f"attention_mask must be 0/1 of input_ids' shape {list(ids.shape)} "
                             f"(as the tokenizer returns it), got shape {list(mask.shape)}")
        return [row[keep.astype(bool)].tolist() for row, keep in zip(ids, mask)]

    def _switch_weights(self, use_fast: bool | None, use_fp16_decoding: bool | None) -> None:
        asked = {k: v for k, v in (("use_fast", use_fast), ("use_fp16_decoding", use_fp16_decoding)) if v is not None}
        options = {**self.load_options, **asked}
        if options != self.load_options:
            self.predictor = None   # let the old weights go before the new ones load
            self.predictor = self._load(options)
            self.load_options = options


class CodeGeeXForCausalLM(CodeGenForCausalLM):
    MODEL_TYPE = "codegeex"
