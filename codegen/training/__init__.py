"""Fine-tuning (run_clm.py): PaddleNLP's Trainer on codegen's models.

Modules: `args` (flags), `data` (jsonl -> cached token blocks), `fim`
(fill-in-the-middle), `lora`, `vocab` (growing the vocabulary), `recompute`,
`model` (loading the starting model, checkpoint weights), `trainer`, `callbacks`
(progress, metrics.json, loss.png), `run` (the command), `merge_lora`.
Only `args`, `trainer`, `callbacks` and `run` import paddlenlp.
"""
