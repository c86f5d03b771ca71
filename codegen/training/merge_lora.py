"""`python -m codegen.training.merge_lora ADAPTER_DIR OUTPUT_DIR`: turn a LoRA run's output
(adapters only) into a complete model that Taskflow and the server load."""
from __future__ import annotations

import sys

from ..checkpoints import save_model
from .model import load_merged


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        model, tokenizer = load_merged(argv[0])
    except (ValueError, FileNotFoundError) as e:
        print(f"merge_lora: error: {e}", file=sys.stderr)
        return 2
    save_model(model, argv[1], tokenizer)
    print(f"wrote the merged model to {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
