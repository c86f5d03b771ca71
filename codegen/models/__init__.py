"""Model architectures, keyed by the `model_type` stored in a checkpoint's config."""
from .codegen import CODEGEN_CONFIGS, CodeGenConfig, CodeGenForCausalLM
from .codegeex import CODEGEEX_CONFIGS, CodeGeeXConfig, CodeGeeXForCausalLM

MODEL_TYPES = {
    "codegen": (CodeGenConfig, CodeGenForCausalLM),
    "codegeex": (CodeGeeXConfig, CodeGeeXForCausalLM),
}

# public checkpoint name -> its exact hyper-parameters
PUBLIC_CONFIGS = {**CODEGEN_CONFIGS, **CODEGEEX_CONFIGS}
