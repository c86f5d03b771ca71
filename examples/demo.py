"""The README's demo: complete a Python prompt with codegen's default model.

Until the package ships its small trained model, the default model is the public
codegen-350M-mono checkpoint converted under $CODEGEN_HOME. When that is absent,
the demo builds a tiny randomly initialised CodeGen so the whole pipeline still
runs offline, and says that its output is noise.
"""
import sys
import tempfile

from codegen import Taskflow
from codegen.checkpoints import init_random_codegen, resolve_model_dir
from codegen.predictor import DEFAULT_MODEL

PROMPT = "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"


def main():
    try:
        model = str(resolve_model_dir(DEFAULT_MODEL))
    except FileNotFoundError:
        model = str(init_random_codegen(tempfile.mkdtemp(prefix="codegen-demo-"), n_embd=64, n_layer=2,
                                        n_head=4, rotary_dim=8, n_positions=512))
        print(f"NOTE: {DEFAULT_MODEL} is not converted on this machine, so this demo runs a tiny "
              f"RANDOMLY INITIALISED CodeGen built at {model}: the pipeline is real, the text is noise.",
              file=sys.stderr)
    flow = Taskflow("code_generation", model=model, decode_strategy="greedy_search", max_length=48)
    print(PROMPT + flow(PROMPT)[0])


if __name__ == "__main__":
    main()
