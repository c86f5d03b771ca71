"""Copy a run_clm.py output into the package as the default model (examples/train_default_model.md).

    python tools/ship_default_model.py /tmp/default-model/run

Writes codegen/assets/models/<name>/ with only what loading needs (config.json, model.safetensors in fp32,
the tokenizer files) and a model card; checkpoints, logs and metrics of the run stay behind. The weights
are read back and compared, so what ships is exactly what was trained.
"""
import argparse
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from codegen.checkpoints import PACKAGED_MODELS, load_model, save_model  # noqa: E402
from codegen.predictor import DEFAULT_MODEL  # noqa: E402
from codegen.tokenizer import load_tokenizer  # noqa: E402

CARD = """# {name}

CodeGen architecture, {parameters:,} parameters ({n_layer} layers, width {n_embd}, {n_head} heads,
context {n_positions}), a {vocab:,}-token byte-level BPE; trained from scratch by this repository's
`run_clm.py` (with fill-in-the-middle) on the Python standard library source (PSF license). It writes
plausible Python, not correct programs: it is the offline default so everything works without a download.
How it was made: examples/train_default_model.md. Its quality: bench/README.md.
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_output", type=Path, help="--output_dir of the run_clm.py run")
    parser.add_argument("--name", default=DEFAULT_MODEL)
    args = parser.parse_args()
    try:
        model, tokenizer = load_model(args.run_output), load_tokenizer(args.run_output)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"ship_default_model.py: {e}")
    target = PACKAGED_MODELS / args.name
    # written and checked beside the shipped model, which is replaced only then
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    save_model(model, staging, tokenizer)
    shipped = load_model(staging)
    for name, tensor in model.state_dict().items():
        if not np.array_equal(tensor.numpy(), shipped.state_dict()[name].numpy()):
            raise SystemExit(f"{name} differs after shipping; {target} is unchanged")
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    c = model.config
    parameters = sum(math.prod(p.shape) for p in model.parameters())
    (target / "README.md").write_text(CARD.format(name=args.name, parameters=parameters, n_layer=c.n_layer,
                                                  n_embd=c.n_embd, n_head=c.n_head, n_positions=c.n_positions,
                                                  vocab=len(tokenizer)))
    size = sum(f.stat().st_size for f in target.iterdir())
    print(json.dumps({"shipped": str(target), "parameters": parameters, "megabytes": round(size / 1e6, 1)}))


if __name__ == "__main__":
    main()
