"""Fine-tune a CodeGen or CodeGeeX model on jsonl code files (see run_clm.sh and --help).

    python -m paddle.distributed.launch --nproc_per_node 2 run_clm.py \
        --model_name_or_path MODEL --train_file train.json --validation_file test.json --output_dir OUT
"""
import sys

from codegen.training.run import main

if __name__ == "__main__":
    sys.exit(main())
