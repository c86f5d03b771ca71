#!/usr/bin/env bash
# Fine-tune a CodeGen/CodeGeeX model on jsonl code files with two data-parallel processes.
#
#   MODEL=Salesforce/codegen-350M-mono ./run_clm.sh [more run_clm.py flags]
#
# MODEL is a converted checkpoint directory or a public name converted under
# $CODEGEN_HOME (`codegen convert`). On CPU the two processes talk over gloo; on
# GPUs set LAUNCH="--gpus 0,1" and DEVICE=gpu (add --fp16 for mixed precision).
# Flags given on the command line override the ones below.
set -euo pipefail
cd "$(dirname "$0")"

MODEL=${MODEL:-Salesforce/codegen-350M-mono}
OUTPUT_DIR=${OUTPUT_DIR:-output/codegen-finetuned}
LAUNCH=${LAUNCH:---nproc_per_node 2}
DEVICE=${DEVICE:-cpu}
# PYTHON: the interpreter with codegen installed (default: python on PATH)

# shellcheck disable=SC2086  # LAUNCH holds several words
exec "${PYTHON:-python}" -m paddle.distributed.launch --log_dir "$OUTPUT_DIR/launch_logs" $LAUNCH run_clm.py \
    --model_name_or_path "$MODEL" \
    --train_file examples/data/train.json \
    --validation_file examples/data/test.json \
    --output_dir "$OUTPUT_DIR" \
    --block_size 1024 \
    --num_train_epochs 5 \
    --per_device_train_batch_size 2 \
    --per_device_eval_batch_size 2 \
    --learning_rate 1e-4 \
    --warmup_ratio 0.1 \
    --logging_steps 10 \
    --eval_steps 100 \
    --save_steps 100 \
    --save_total_limit 3 \
    --device "$DEVICE" \
    "$@"
