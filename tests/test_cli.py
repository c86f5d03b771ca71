"""The `codegen` command as a user runs it."""
import subprocess
import sys

from conftest import FIXTURES


def codegen(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "codegen.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, **kwargs)


def test_convert_then_generate_greedy_matches_taskflow(tmp_path):
    from codegen import Taskflow
    converted = codegen("convert", FIXTURES / "hf-codegen-tiny", tmp_path / "m")
    assert converted.returncode == 0, converted.stderr
    out = codegen("generate", "def fib(n):", "--model", tmp_path / "m", "--max-length", 8)
    assert out.returncode == 0, out.stderr
    # the command prints the raw continuation: Taskflow without PaddleNLP's cut
    expected = Taskflow("code_generation", model=str(tmp_path / "m"), decode_strategy="greedy_search",
                        max_length=8, repetition_penalty=1.0, stop=[])("def fib(n):")[0]
    assert out.stdout == "def fib(n):" + expected + "\n"


def test_streamed_output_equals_plain_output(tiny_model_dir):
    plain = codegen("generate", "import os\n", "--model", tiny_model_dir, "--max-length", 10)
    streamed = codegen("generate", "import os\n", "--model", tiny_model_dir, "--max-length", 10, "--stream")
    assert plain.returncode == streamed.returncode == 0
    assert plain.stdout == streamed.stdout


def test_prompt_from_stdin(tiny_model_dir):
    from_arg = codegen("generate", "x = 1\n", "--model", tiny_model_dir, "--max-length", 4)
    from_stdin = codegen("generate", "-", "--model", tiny_model_dir, "--max-length", 4, input="x = 1\n")
    assert from_arg.stdout == from_stdin.stdout


def test_errors_are_one_line_not_tracebacks(tmp_path, tiny_model_dir):
    missing = codegen("generate", "x", "--model", tmp_path / "nope")
    assert missing.returncode == 2 and "codegen convert" in missing.stderr and "Traceback" not in missing.stderr
    bad = codegen("generate", "x", "--model", tiny_model_dir, "--top-p", "2")
    assert bad.returncode == 2 and "top_p" in bad.stderr and "Traceback" not in bad.stderr
    empty = codegen("generate", "", "--model", tiny_model_dir)
    assert empty.returncode == 2 and "empty" in empty.stderr
    junk = codegen("convert", tmp_path, tmp_path / "out")
    assert junk.returncode == 2 and "not a recognised checkpoint" in junk.stderr


def test_init_writes_a_model_that_generates(tmp_path):
    made = codegen("init", tmp_path / "m", "--n-embd", 32, "--n-layer", 1, "--n-head", 4, "--rotary-dim", 4,
                   "--n-positions", 64)
    assert made.returncode == 0, made.stderr
    from codegen.checkpoints import load_model
    model = load_model(tmp_path / "m")
    assert (model.config.n_embd, model.config.n_layer, model.config.vocab_size) == (32, 1, 51200)
    assert codegen("generate", "x", "--model", tmp_path / "m", "--max-length", 3).returncode == 0
    bad = codegen("init", tmp_path / "b", "--like", "THUDM/codegeex-13b")
    assert bad.returncode == 2 and "--like" in bad.stderr


def test_init_takes_its_vocabulary_and_end_of_text_from_a_tokenizer(tmp_path):
    from codegen.checkpoints import load_model, resolve_model_dir
    from codegen.predictor import DEFAULT_MODEL
    from codegen.tokenizer import load_tokenizer
    made = codegen("init", tmp_path / "m", "--n-embd", 32, "--n-layer", 1, "--n-head", 4, "--rotary-dim", 4,
                   "--tokenizer", resolve_model_dir(DEFAULT_MODEL))
    assert made.returncode == 0, made.stderr
    tokenizer = load_tokenizer(tmp_path / "m")
    config = load_model(tmp_path / "m").config
    assert tokenizer.family == "bpe" and config.vocab_size == len(tokenizer) == 8192
    assert config.eos_token_id == config.bos_token_id == tokenizer.eos_token_id == 0


def test_language_adds_codegeex_tag_to_the_prompt(tiny_model_dir):
    from codegen import Taskflow
    out = codegen("generate", "int add(int a, int b) {", "--language", "C++", "--model", tiny_model_dir,
                  "--max-length", 6)
    assert out.returncode == 0, out.stderr
    tagged = Taskflow("code_generation", model=str(tiny_model_dir), decode_strategy="greedy_search", max_length=6,
                      repetition_penalty=1.0, stop=[])("// language: C++\nint add(int a, int b) {")[0]
    assert out.stdout == "int add(int a, int b) {" + tagged + "\n"
    bad = codegen("generate", "x", "--language", "Klingon", "--model", tiny_model_dir)
    assert bad.returncode == 2 and "unknown language 'Klingon'" in bad.stderr and "Traceback" not in bad.stderr


def test_translate_runs_the_code_translation_task(tiny_model_dir, tmp_path):
    from codegen import Taskflow
    source = tmp_path / "add.py"
    source.write_text("def add(a, b):\n    return a + b\n")
    out = codegen("translate", "--source", "python", "--target", "go", source, "--model", tiny_model_dir,
                  "--max-length", 6, "--target-prefix", "func add(a int, b int) int {\n")
    assert out.returncode == 0, out.stderr
    expected = Taskflow("code_translation", model=str(tiny_model_dir), source_language="python",
                        target_language="go", target_prefix="func add(a int, b int) int {\n", max_length=6)(
        source.read_text())[0]
    assert out.stdout == expected + "\n" and out.stdout.startswith("func add(a int, b int) int {\n")
    missing = codegen("translate", "--source", "python", "--target", "go", tmp_path / "nope.py")
    assert missing.returncode == 2 and "nope.py" in missing.stderr and "Traceback" not in missing.stderr


def test_convert_quantize_int8_generates_what_quantizing_at_load_does(tmp_path):
    assert "--quantize {int8}" in codegen("convert", "--help").stdout
    for args in ([tmp_path / "m"], [tmp_path / "int8", "--quantize", "int8"]):
        converted = codegen("convert", FIXTURES / "hf-codegen-tiny", *args)
        assert converted.returncode == 0, converted.stderr
    at_load = codegen("generate", "def fib(n):", "--model", tmp_path / "m", "--max-length", 8, "--quantize", "int8")
    converted = codegen("generate", "def fib(n):", "--model", tmp_path / "int8", "--max-length", 8)
    assert at_load.returncode == converted.returncode == 0, converted.stderr
    assert converted.stdout == at_load.stdout


def test_every_command_that_loads_a_model_takes_the_same_load_options(monkeypatch, tmp_path, tiny_model_dir):
    import pytest
    import codegen.predictor
    import codegen.taskflow
    from codegen.cli import main

    class Loaded(Exception):
        pass

    def fake_predictor(model, **options):
        raise Loaded(options)

    monkeypatch.setattr(codegen.predictor, "Predictor", fake_predictor)
    monkeypatch.setattr(codegen.taskflow, "Predictor", fake_predictor)  # bound at its import
    (tmp_path / "a.py").write_text("x = 1\n")
    flags = ["--model", tiny_model_dir, "--quantize", "int8", "--use-fp16-decoding", "--no-use-fast",
             "--device", "cpu", "--tensor-parallel", "1"]
    commands = [["generate", "x"], ["translate", tmp_path / "a.py", "--source", "python", "--target", "go"],
                ["eval", "humaneval", "--output", tmp_path / "out", "--limit", "1"],
                ["eval", "perplexity", tmp_path / "a.py"]]
    for command in commands:
        with pytest.raises(Loaded) as loaded:
            main([*map(str, command), *map(str, flags)])
        assert loaded.value.args[0] == {"device": "cpu", "quantize": "int8", "use_fast": False,
                                        "use_fp16_decoding": True, "tensor_parallel": 1}, command
