"""The small model shipped in the package is the default everywhere, and writes code.

Its quality figures are measured in bench/ (bench_default_model.py); here only what would break if the
wrong weights, tokenizer or default shipped: bodies that follow the docstring, a loss far below chance,
infilling prompts with the model's FIM sentinels.
"""
import subprocess
import sys
from pathlib import Path

import openai
from conftest import running_server

from codegen import Taskflow
from codegen.checkpoints import PACKAGED_MODELS, resolve_model_dir
from codegen.languages import function_end_stops
from codegen.predictor import DEFAULT_MODEL
from codegen.server.settings import Settings
from codegen.tokenizer import load_tokenizer

PROMPTS = [
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    'def count_words(text):\n    """Return a dict mapping each word of text to how often it occurs."""\n',
    'def clamp(value, low, high):\n    """Return value limited to the range [low, high]."""\n',
]


def test_the_default_is_the_packaged_model_within_40_mb():
    directory = resolve_model_dir(DEFAULT_MODEL)
    assert directory == PACKAGED_MODELS / DEFAULT_MODEL
    assert sum(f.stat().st_size for f in directory.iterdir()) <= 40_000_000
    tokenizer = load_tokenizer(directory)
    assert {"<fim_prefix>", "<fim_suffix>", "<fim_middle>"} <= set(tokenizer.special_token_ids)


def test_taskflow_with_no_model_continues_inside_the_function():
    """Each prompt ends with a newline after the docstring: the body must follow, indented (this is
    what token healing gives this tokenizer; without it the model starts a new top-level statement)."""
    flow = Taskflow("code_generation", stop=function_end_stops("Python"), seed=0)
    assert flow.predictor.model_dir == PACKAGED_MODELS / DEFAULT_MODEL
    for completion in flow(PROMPTS):
        first_line = next(line for line in completion.split("\n") if line.strip())
        assert first_line.startswith("    "), completion


def test_the_shipped_model_predicts_unseen_code_far_better_than_chance():
    from codegen.evaluation.perplexity import score_tokens
    from codegen.predictor import Predictor
    predictor = Predictor()
    ids = predictor.tokenizer.encode((Path(__file__).parents[1] / "codegen" / "languages.py").read_text())
    nll, count = score_tokens(predictor.model, ids, 512, 256, predictor.tokenizer.eos_token_id)
    # chance is ln(8192) = 9.0 nats per token; the trained model scores about 5.0 on this file
    assert nll / count < 6.0


def test_codegen_generate_needs_no_model_argument():
    done = subprocess.run([sys.executable, "-m", "codegen.cli", "generate", PROMPTS[0], "--max-length", "24"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


def test_the_server_serves_the_default_model_with_infilling_prompts():
    prefix, suffix = "def add(a, b):\n    return ", "\n\n\nprint(add(2, 3))\n"
    tokenizer = load_tokenizer(resolve_model_dir(DEFAULT_MODEL))
    with running_server(Settings(max_batch_size=4, max_queue=8)) as (base, _):
        client = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0, timeout=120)
        middle = client.completions.create(model="codegen", prompt=prefix, suffix=suffix, max_tokens=8,
                                           temperature=0)
    # prefix and suffix framed by the three FIM sentinels
    assert middle.usage.prompt_tokens == len(tokenizer.encode(prefix)) + len(tokenizer.encode(suffix)) + 3
    assert middle.usage.completion_tokens >= 1
