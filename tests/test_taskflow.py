"""Taskflow as PaddleNLP users call it, on small models made here."""
import re

import numpy as np
import pytest

from codegen import Taskflow

from conftest import FIXTURES


def test_string_in_list_out_and_batch_in_list_out(tiny_model_dir):
    flow = Taskflow("code_generation", model=str(tiny_model_dir), decode_strategy="greedy_search", max_length=8)
    one = flow("def add(a, b):")
    many = flow(["def add(a, b):", "class Stack:"])
    assert isinstance(one, list) and len(one) == 1 and isinstance(one[0], str)
    assert len(many) == 2 and many[0] == one[0]


def test_batch_size_does_not_change_greedy_results(tiny_model_dir):
    prompts = ["def add(a, b):", "import os\n", "class Stack:\n    def push(self, x):"]
    kwargs = dict(model=str(tiny_model_dir), decode_strategy="greedy_search", max_length=6)
    assert Taskflow("code_generation", batch_size=3, **kwargs)(prompts) == \
        Taskflow("code_generation", batch_size=1, **kwargs)(prompts)


def test_output_scores_and_multiple_sequences(tiny_model_dir):
    flow = Taskflow("code_generation", model=str(tiny_model_dir), max_length=5, output_scores=True,
                    num_return_sequences=3, top_k=50, seed=1)
    completions, scores = flow(["def f():"])
    assert len(completions[0]) == 3 and len(scores[0]) == 3
    assert all(s <= 0 for s in scores[0])


def test_seeded_sampling_is_reproducible(tiny_model_dir):
    make = lambda seed: Taskflow("code_generation", model=str(tiny_model_dir), max_length=10, top_k=0,
                                 temperature=1.0, seed=seed)
    assert make(7)("x = ") == make(7)("x = ")
    assert make(7)("x = ") != make(8)("x = ")


@pytest.mark.parametrize("kwargs, field", [
    (dict(top_p=1.5), "top_p"), (dict(top_p=0), "top_p"), (dict(temperature=-1), "temperature"),
    (dict(max_length=0), "max"), (dict(decode_strategy="nucleus"), "decode_strategy"),
])
def test_bad_options_name_the_problem(tiny_model_dir, kwargs, field):
    with pytest.raises(ValueError, match=field):
        Taskflow("code_generation", model=str(tiny_model_dir), **kwargs)


def test_bad_inputs_name_the_problem(tiny_model_dir):
    flow = Taskflow("code_generation", model=str(tiny_model_dir), max_length=4)
    with pytest.raises(ValueError, match="empty"):
        flow("")
    with pytest.raises(ValueError, match="string"):
        flow(42)
    with pytest.raises(ValueError, match="unknown task"):
        Taskflow("summarization")


def test_prompt_longer_than_context_is_left_truncated_with_a_warning(tiny_model_dir, caplog):
    flow = Taskflow("code_generation", model=str(tiny_model_dir), decode_strategy="greedy_search", max_length=4)
    long_prompt = "x = 1\n" * 400  # far over the tiny model's 256 positions
    with caplog.at_level("WARNING"):
        out = flow(long_prompt)
    assert "left-truncated" in caplog.text
    assert out == flow("x = 1\n" * 400)


def test_missing_model_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match="codegen convert"):
        Taskflow("code_generation", model=str(tmp_path / "nope"))


def test_codegeex_golden_continuation_through_taskflow(tmp_path):
    """Issue 3's end-to-end check: THUDM's tiny reference checkpoint, converted, then greedy."""
    from codegen.checkpoints import convert
    golden = np.load(FIXTURES / "codegeex" / "codegeex-tiny-a.npz")
    dst = convert(FIXTURES / "codegeex" / "codegeex-tiny-a.pt", tmp_path / "gx",
                  config_path=FIXTURES / "codegeex" / "codegeex-tiny-a.json")
    new_ids = golden["greedy_new_ids"][0].tolist()
    flow = Taskflow("code_generation", model=str(dst), decode_strategy="greedy_search",
                    max_length=len(new_ids), min_length=len(new_ids), repetition_penalty=1.0, stop=[])
    from codegen.tokenizer import load_tokenizer
    # the golden prompt is random ids, which no text encodes to: pass them as token ids
    assert flow([golden["greedy_prompt"][0].tolist()]) == [load_tokenizer(dst).decode(new_ids)]


def test_language_option_prefixes_codegeex_tag(tiny_model_dir):
    kwargs = dict(model=str(tiny_model_dir), decode_strategy="greedy_search", max_length=6, stop=[])
    tagged = Taskflow("code_generation", language="C++", **kwargs)("int add(int a, int b) {")
    assert tagged == Taskflow("code_generation", **kwargs)("// language: C++\nint add(int a, int b) {")
    with pytest.raises(ValueError, match="unknown language"):
        Taskflow("code_generation", language="Klingon", **kwargs)("x")


def test_code_translation_uses_the_translation_prompt(tiny_model_dir):
    source = "def add(a, b):\n    return a + b\n"
    kwargs = dict(model=str(tiny_model_dir), decode_strategy="greedy_search", max_length=6)
    out = Taskflow("code_translation", source_language="python", target_language="Go",
                   target_prefix="func add(a int, b int) int {\n", **kwargs)(source)
    plain = Taskflow("code_generation", stop=[], **kwargs)(
        "code translation\nPython:\n" + source.rstrip() + "\nGo:\nfunc add(a int, b int) int {\n")
    assert out[0].startswith("func add(a int, b int) int {\n")
    assert out[0][len("func add(a int, b int) int {\n"):].startswith(plain[0].rstrip("}\n")[:10])
    with pytest.raises(ValueError, match="unknown language"):
        Taskflow("code_translation", source_language="python", target_language="Klingon", **kwargs)


# PaddleNLP's code_generation `_postprocess`, restated: split at the first unindented class/def/#/@/print/if
# line, then strip trailing whitespace
def paddlenlp_postprocess(text: str) -> str:
    return re.split("\nclass|\ndef|\n#|\n@|\nprint|\nif", text)[0].rstrip()


# with the shipped model, greedy: the first continues its function with "\n    return None\n\n\n" and then
# starts an unindented `class`; the second leaves the function at once
CUT_PROMPTS = ["import sys\ndef main():\n    print(sys.argv)", "def read(path):\n    with open(path) as f:\n"
               "        return f.read()"]


def test_completions_are_cut_as_paddlenlp_cuts_them_and_generation_stops_there():
    greedy = dict(decode_strategy="greedy_search", max_length=64)
    uncut = Taskflow("code_generation", stop=[], **greedy)(CUT_PROMPTS)
    flow = Taskflow("code_generation", **greedy)
    cut = flow(CUT_PROMPTS)
    assert cut == [paddlenlp_postprocess(text) for text in uncut]
    assert cut[0] == "\n    return None" and uncut[0].startswith("\n    return None\n\n\nclass")
    # the stop strings end decoding: far fewer than max_length tokens were generated
    sequence = flow.predictor.generate(CUT_PROMPTS[:1], flow.config)[0][0]
    assert sequence.finish_reason == "stop" and len(sequence.token_ids) < 10


def test_stop_empty_turns_the_cut_off_and_an_explicit_stop_replaces_it():
    greedy = dict(decode_strategy="greedy_search", max_length=64)
    uncut = Taskflow("code_generation", stop=[], **greedy)(CUT_PROMPTS[0])[0]
    assert len(uncut) > 100 and "\nclass" in uncut
    # only "class" stops it now: PaddleNLP's rules (and its rstrip) are gone
    assert Taskflow("code_generation", stop=["class"], **greedy)(CUT_PROMPTS[0]) == [uncut.split("class")[0]]
    assert Taskflow("code_generation", stop="class", **greedy)(CUT_PROMPTS[0]) == [uncut.split("class")[0]]


def test_a_non_python_language_is_not_cut_at_python_lines(tiny_model_dir):
    flow = Taskflow("code_generation", model=str(tiny_model_dir), language="C++", max_length=4)
    assert flow.config.stop == [] and not flow.paddlenlp_cut
    assert Taskflow("code_generation", model=str(tiny_model_dir), language="py").paddlenlp_cut


def test_the_readmes_use_it_output_is_what_taskflow_prints():
    import ast
    from pathlib import Path
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    shown = readme.split("prints (the shipped model, cut by PaddleNLP's rules below")[1].split("```\n")[1]
    flow = Taskflow("code_generation", decode_strategy="greedy_search")
    assert flow(["import sys\ndef main():\n    print(sys.argv)", "def add(a, b):"]) == ast.literal_eval(shown)
