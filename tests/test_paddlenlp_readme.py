"""PaddleNLP's examples/code_generation/codegen README, run as written: only `paddlenlp` in the imports
becomes `codegen`, `--device gpu` becomes `--device cpu`, and on CPU Paddle's launcher takes
`--nproc_per_node 2` for `--gpus 0,1` (it rejects --gpus without GPUs).

The README's public model names resolve under $CODEGEN_HOME, which each test points at small local
models (the shipped one, or a tiny CodeGen of 1024 positions for the README's --block_size 1024).
Its server and client snippets are covered in test_server.py (test_openai_0x_request_of_the_paddlenlp_
readme_is_served, test_fauxpilot_setting_of_the_paddlenlp_readme_is_served,
test_copilot_request_replayed_on_an_engine_route) and below (`python codegen_server.py`).
"""
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from conftest import (OPENAI_0X_BODY, OPENAI_0X_HEADERS, OPENAI_0X_PATH, REPO, assert_paddlenlp_readme_response,
                      free_socket, health, make_tiny_codegen, wait_until)

from codegen import Taskflow
from codegen.checkpoints import PACKAGED_MODELS, codegen_home
from codegen.predictor import DEFAULT_MODEL



def home_with(tmp_path: Path, name: str, model_dir: Path) -> Path:
    """A $CODEGEN_HOME where the public `name` is `model_dir`, sharing the built CPU kernels."""
    home = tmp_path / "home"
    (home / name).parent.mkdir(parents=True, exist_ok=True)
    (home / name).symlink_to(model_dir)
    if (codegen_home() / "kernels").is_dir():
        (home / "kernels").symlink_to(codegen_home() / "kernels")
    return home


def run_python(code: str, home: Path, cwd: Path) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "CODEGEN_HOME": str(home), "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


# 效果展示: "解算法题效果展示"
TASKFLOW_SNIPPET = '''
from codegen import Taskflow

prompt = "def lengthOfLongestSubstring(self, s: str) -> int:"
codegen = Taskflow("code_generation", model="Salesforce/codegen-2B-mono",decode_strategy="greedy_search", repetition_penalty=1.0)
print(codegen(prompt))
'''


def test_taskflow_snippet_prints_the_completion_cut_as_paddlenlp_cuts_it(tmp_path):
    home = home_with(tmp_path, "Salesforce/codegen-2B-mono", PACKAGED_MODELS / DEFAULT_MODEL)
    printed = ast.literal_eval(run_python(TASKFLOW_SNIPPET, home, tmp_path))
    uncut = Taskflow("code_generation", decode_strategy="greedy_search", repetition_penalty=1.0, stop=[])(
        "def lengthOfLongestSubstring(self, s: str) -> int:")[0]
    # PaddleNLP's _postprocess: split at the first unindented class/def/#/@/print/if line, rstrip
    assert printed == [re.split("\nclass|\ndef|\n#|\n@|\nprint|\nif", uncut)[0].rstrip()]
    # as in the README, the function's indented body (the cut itself: test_taskflow.py)
    assert printed[0].startswith("\n    ")


# 更多使用案例: "根据注释/功能描述写代码"
LOW_LEVEL_SNIPPET = r"""
import re
import paddle
from codegen import CodeGenTokenizer, CodeGenForCausalLM

# The supported models are shown in the following table
model_name = 'Salesforce/codegen-2B-mono'
# Init tokenizer
tokenizer = CodeGenTokenizer.from_pretrained(model_name)
# Init model
model = CodeGenForCausalLM.from_pretrained(model_name)

prompt = "# this function prints hello world"
inputs = tokenizer([prompt])
inputs = {k: paddle.to_tensor(v) for (k, v) in inputs.items()}
# Generate
output, score = model.generate(inputs['input_ids'],
                               max_length=128,
                               decode_strategy='greedy_search')
# Decode the result
print(
    tokenizer.decode(output[0],
                     truncate_before_pattern=[r"\n\n^#", "^'''", "\n\n\n"],
                     skip_special_tokens=True,
                     spaces_between_special_tokens=False))
"""


def test_low_level_snippet_prints_the_text_taskflow_gives_with_the_same_settings(tmp_path):
    home = home_with(tmp_path, "Salesforce/codegen-2B-mono", PACKAGED_MODELS / DEFAULT_MODEL)
    printed = run_python(LOW_LEVEL_SNIPPET, home, tmp_path)
    assert printed.endswith("\n")
    printed = printed[:-1]
    same_settings = Taskflow("code_generation", decode_strategy="greedy_search", max_length=128,
                             repetition_penalty=1.0, stop=[])("# this function prints hello world")[0]
    # the shipped model writes none of the patterns here, so nothing is cut: the very text of Taskflow
    for pattern in (r"\n\n^#", "^'''", "\n\n\n"):
        assert not re.search(pattern, same_settings, re.MULTILINE), pattern
    assert printed == same_settings and len(printed) > 100


# 启动服务 (`python codegen_server.py`) then 测试服务 (the openai 0.x client, as the raw request it sends)
def test_codegen_server_py_with_no_arguments_serves_the_readme_client():
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    # the port is the only setting changed (CODEGEN_PORT: the README's 8978 may be taken here)
    process = subprocess.Popen([sys.executable, "codegen_server.py"], cwd=REPO,
                               env={**os.environ, "CODEGEN_PORT": str(port), "PYTHONPATH": str(REPO)},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: health(base) == 200 or process.poll() is not None, "codegen_server.py")
        assert process.poll() is None, process.stdout.read().decode()
        response = httpx.post(base + OPENAI_0X_PATH, content=OPENAI_0X_BODY, headers=OPENAI_0X_HEADERS, timeout=120)
        assert_paddlenlp_readme_response(response)
    finally:
        process.terminate()
        process.wait(30)


# 模型训练, with the data format of 数据准备 ({"code": ...} per line)
TRAINING_COMMAND = """
python -m paddle.distributed.launch --nproc_per_node 2 run_clm.py \\
            --model_name_or_path Salesforce/codegen-350M-mono \\
            --block_size 1024 \\
            --output_dir output \\
            --train_file train.json \\
            --validation_file test.json \\
            --num_train_epochs 5 \\
            --logging_steps 1 \\
            --save_steps 10 \\
            --train_batch_size 2 \\
            --eval_batch_size 2 \\
            --learning_rate 1e-4 \\
            --warmup_proportion 0.1 \\
            --device cpu
"""


def test_training_command_runs_and_evaluates_at_each_save(tmp_path):
    model = make_tiny_codegen(tmp_path / "tiny", n_positions=1024)
    home = home_with(tmp_path, "Salesforce/codegen-350M-mono", model)
    examples = REPO / "examples" / "data"
    # 40 + 12 documents: two 1024-token blocks per rank and epoch, so 5 epochs are 10 steps
    (tmp_path / "train.json").write_text("".join((examples / "train.json").read_text().splitlines(True)[:40]))
    (tmp_path / "test.json").write_text("".join((examples / "test.json").read_text().splitlines(True)[:12]))
    shutil.copy(REPO / "run_clm.py", tmp_path / "run_clm.py")
    command = TRAINING_COMMAND.replace("\\\n", " ").replace("python", sys.executable, 1).split()
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "CODEGEN_HOME": str(home), "PYTHONPATH": str(REPO)})
    logs = "".join(p.read_text() for p in sorted((tmp_path / "log").glob("workerlog.*")))
    assert done.returncode == 0, (done.stdout + done.stderr + logs)[-4000:]
    output = tmp_path / "output"
    assert {"config.json", "model.safetensors", "vocab.json", "merges.txt"} <= {p.name for p in output.iterdir()}
    metrics = json.loads((output / "metrics.json").read_text())
    assert [e["step"] for e in metrics["train_curve"]] == list(range(1, 11))     # --logging_steps 1
    assert [e["step"] for e in metrics["eval_curve"]] == [10]                    # --save_steps 10: save and evaluate
    assert (output / "checkpoint-10").is_dir()


def test_device_gpu_without_a_gpu_fails_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "run_clm.py"), "--model_name_or_path", DEFAULT_MODEL,
                           "--train_file", "train.json", "--output_dir", "output", "--device", "gpu"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == \
        "run_clm.py: error: --device gpu: no GPU visible to this Paddle build; use --device cpu"


FAKE_PYTHON = """#!/bin/sh
# answers run_clm.sh's device probe with $GPUS_SEEN, prints the launch command instead of training
if [ "$1" = "-c" ]; then echo "$GPUS_SEEN"; else echo "$@"; fi
"""


@pytest.mark.parametrize("gpus_seen, launch, device", [("", "--nproc_per_node 2", "cpu"),
                                                       ("0,1,2", "--gpus 0,1,2", "gpu")])
def test_run_clm_sh_uses_every_gpu_paddle_sees_else_two_cpu_processes(tmp_path, gpus_seen, launch, device):
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    done = subprocess.run(["bash", str(REPO / "run_clm.sh")], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHON": str(fake), "GPUS_SEEN": gpus_seen})
    assert done.returncode == 0, done.stderr
    assert f"launch --log_dir output/codegen-finetuned/launch_logs {launch} run_clm.py" in done.stdout
    assert done.stdout.split("--device ")[1].split()[0] == device


def test_run_clm_sh_probe_finds_no_gpu_here():
    probe = textwrap.dedent((REPO / "run_clm.sh").read_text().split('GPUS=$("$PYTHON" -c \'')[1].split("')")[0])
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=120).stdout.strip() == ""
