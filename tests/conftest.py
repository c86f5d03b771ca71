"""Shared fixtures: small models saved in codegen's format, made at test time."""
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


def make_tiny_codegen(directory: Path, seed: int = 0, n_positions: int = 256) -> Path:
    """A randomly initialised CodeGen with the real tokenizer, in our checkpoint format."""
    from codegen.checkpoints import init_random_codegen
    return init_random_codegen(directory, seed=seed, vocab_size=51200, n_positions=n_positions, n_embd=32,
                               n_layer=2, n_head=4, rotary_dim=4)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """Read-only for tests: copy it before changing anything inside."""
    return make_tiny_codegen(tmp_path_factory.mktemp("tiny-codegen"))
