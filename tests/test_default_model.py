"""The small model shipped in the package is the default everywhere, and writes code.

Its quality figures are measured in bench/ (bench_default_model.py); here only what would break if the
wrong weights, tokenizer or default shipped: completions that parse, infilling that ends.
"""
import ast
import subprocess
import sys

import openai

from codegen import Taskflow
from codegen.checkpoints import PACKAGED_MODELS, resolve_model_dir
from codegen.languages import function_end_stops
from codegen.predictor import DEFAULT_MODEL
from codegen.server.settings import Settings
from codegen.tokenizer import load_tokenizer
from test_server import running_server

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


def test_taskflow_with_no_model_completes_functions_that_parse():
    flow = Taskflow("code_generation", stop=function_end_stops("Python"), seed=0)
    assert flow.predictor.model_dir == PACKAGED_MODELS / DEFAULT_MODEL
    completions = flow(PROMPTS)
    assert all(c.strip() for c in completions)
    parsed = []
    for prompt, completion in zip(PROMPTS, completions):
        try:
            ast.parse(prompt + completion)
            parsed.append(True)
        except SyntaxError:
            parsed.append(False)
    assert sum(parsed) >= 2, completions


def test_codegen_generate_needs_no_model_argument():
    done = subprocess.run([sys.executable, "-m", "codegen.cli", "generate", PROMPTS[0], "--max-length", "24"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


def test_the_server_serves_the_default_model_and_infills_to_an_end():
    with running_server(Settings(max_batch_size=4, max_queue=8)) as (base, _):
        client = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0, timeout=120)
        middle = client.completions.create(model="codegen", prompt="def add(a, b):\n    return ",
                                           suffix="\n\n\nprint(add(2, 3))\n", max_tokens=64, temperature=0)
    # a model trained with FIM ends the middle with end-of-text instead of running to max_tokens
    assert middle.choices[0].finish_reason == "stop"
    assert 0 < middle.usage.completion_tokens < 64
