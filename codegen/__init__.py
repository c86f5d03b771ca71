"""codegen: generate code with CodeGen and CodeGeeX on PaddlePaddle.

Attributes are imported on first use so that `import codegen` stays cheap
(Paddle itself loads only when a model does).
"""
import os
import warnings

__version__ = "0.1.0"

# The CPU kernels' OpenMP threads wait at a few barriers per layer. libgomp's default is to
# spin there for 300,000 pauses (~15 ms on current x86) before sleeping: beside another busy
# process that steals the core the awaited thread needs, and decoding slowed 4x (36x beside a
# loaded server). 1,000 pauses (~50 us) still cover the waits of an idle machine. libgomp reads
# this once, when it loads (`import paddle` loads it): a process that imported paddle before
# codegen keeps the default. An explicit OMP_WAIT_POLICY or GOMP_SPINCOUNT wins.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")

# `import paddle` warns that ccache is missing, a hint for people compiling Paddle extensions; our
# kernels build once per machine, so for codegen's users it is only noise
warnings.filterwarnings("ignore", message="No ccache found", category=UserWarning)

_LAZY = {
    "Taskflow": ("codegen.taskflow", "Taskflow"),
    "Predictor": ("codegen.predictor", "Predictor"),
    "load_model": ("codegen.checkpoints", "load_model"),
    "convert": ("codegen.checkpoints", "convert"),
    "load_tokenizer": ("codegen.tokenizer", "load_tokenizer"),
    "GenerationConfig": ("codegen.generation", "GenerationConfig"),
    # PaddleNLP's low-level API (paddlenlp.transformers' names)
    **{name: ("codegen.paddlenlp_api", name) for name in (
        "CodeGenTokenizer", "CodeGenForCausalLM", "CodeGeeXTokenizer", "CodeGeeXForCausalLM")},
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'codegen' has no attribute {name!r}")
    import importlib
    module, attr = _LAZY[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value
