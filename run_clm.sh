#!/usr/bin/env bash
# Fine-tune a CodeGen/CodeGeeX model on jsonl code files, data parallel: on every GPU Paddle
# sees, or with two CPU processes (gloo) when it sees none.
#
#   MODEL=Salesforce/codegen-350M-mono bash run_clm.sh [more run_clm.py flags]
#
# MODEL is a converted checkpoint directory or a public name converted under
# $CODEGEN_HOME (`codegen convert`). LAUNCH and DEVICE override the choice of
# devices (e.g. LAUNCH="--gpus 0" DEVICE=gpu); add --fp16 on GPUs for mixed precision.
# Flags given on the command line override the ones below.
set -euo pipefail
cd "$(dirname "$0")"

# PYTHON: the interpreter with codegen installed (default: python on PATH)
PYTHON=${PYTHON:-python}
MODEL=${MODEL:-Salesforce/codegen-350M-mono}
OUTPUT_DIR=${OUTPUT_DIR:-output/codegen-finetuned}
GPUS=$("$PYTHON" -c 'import paddle
n = paddle.device.cuda.device_count() if paddle.device.is_compiled_with_cuda() else 0
print(",".join(map(str, range(n))))')
if [ -n "$GPUS" ]; then
    LAUNCH=${LAUNCH:---gpus $GPUS}
    DEVICE=${DEVICE:-gpu}
else
    LAUNCH=${LAUNCH:---nproc_per_node 2}
    DEVICE=${DEVICE:-cpu}
fi

# shellcheck disable=SC2086  # LAUNCH holds several words
exec "$PYTHON" -m paddle.distributed.launch --log_dir "$OUTPUT_DIR/launch_logs" $LAUNCH run_clm.py \
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
    --save_steps 100 \
    --save_total_limit 3 \
    --device "$DEVICE" \
    "$@"
