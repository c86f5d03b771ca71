"""Shared fixtures: small models saved in codegen's format, made at test time."""
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]


def make_tiny_codegen(directory: Path, seed: int = 0, n_positions: int = 256) -> Path:
    """A randomly initialised CodeGen with the real tokenizer, in our checkpoint format."""
    from codegen.checkpoints import init_random_codegen
    return init_random_codegen(directory, seed=seed, vocab_size=51200, n_positions=n_positions, n_embd=32,
                               n_layer=2, n_head=4, rotary_dim=4)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """Read-only for tests: copy it before changing anything inside."""
    return make_tiny_codegen(tmp_path_factory.mktemp("tiny-codegen"))


def two_rank_launch(script: Path, model_dir: Path, directory: Path, *flags: str) -> list[str]:
    """`paddle.distributed.launch` of `script` (run_clm.py or a wrapper of its main) on 2 CPU ranks.

    Trains on the first 40 example files in 32-token blocks; logs go to directory/logs,
    the run's output to directory/out. `flags` add to or override the run_clm flags.
    """
    train = directory / "train.jsonl"
    lines = (REPO / "examples" / "data" / "train.json").read_text().splitlines(keepends=True)[:40]
    train.write_text("".join(lines))
    return [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
            "--log_dir", str(directory / "logs"), str(script),
            "--model_name_or_path", str(model_dir), "--train_file", str(train),
            "--data_cache_dir", str(directory / "cache"), "--output_dir", str(directory / "out"),
            "--block_size", "32", "--per_device_train_batch_size", "2", "--learning_rate", "5e-3", *flags]
