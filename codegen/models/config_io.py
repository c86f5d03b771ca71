"""Config dataclasses to and from the JSON dicts stored beside checkpoints."""
from dataclasses import asdict, fields

# Far above any released model (vocabularies reach ~256k, hidden sizes ~16k, depths ~130,
# contexts ~1M) and low enough that whatever a config implies is plain integer arithmetic
# on sizes a loader can refuse before it allocates anything.
MAX_VOCAB = 10_000_000
MAX_HIDDEN = 65_536
MAX_LAYERS = 1_000
MAX_POSITIONS = 1 << 20
# 4 TB of float32: more than any machine this runs on holds
MAX_PARAMETERS = 10**12
# Tables a model computes from its config when it is built (CodeGen's rotary sin and cos),
# even under paddle.LazyGuard, before any weight is read: 1 GiB of float32, which fits a
# 1M-token context with 256 rotary dimensions
MAX_TABLE_FLOATS = 1 << 28


class ConfigDict:
    """`to_dict` / `from_dict` for a config dataclass; keys it does not know are ignored,
    so configs written by other tools (Hugging Face, PaddleNLP) load as they are."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def check_sizes(config, limits: dict) -> None:
    """Raise ValueError unless each named field is an int in its (low, high) range."""
    for name, (low, high) in limits.items():
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise ValueError(f"{name} must be an integer from {low} to {high}, got {value!r}")


def check_epsilon(name: str, value) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < 1:
        raise ValueError(f"{name} must be a number between 0 and 1, got {value!r}")


def check_parameter_count(count: int) -> None:
    if count > MAX_PARAMETERS:
        raise ValueError(f"the sizes imply {count:,} parameters, more than the {MAX_PARAMETERS:,} "
                         f"any supported model has")


def check_table_size(what: str, floats: int) -> None:
    if floats > MAX_TABLE_FLOATS:
        raise ValueError(f"{what} would hold {floats:,} floats, more than the {MAX_TABLE_FLOATS:,} "
                         f"a model may build from its config")
