"""Config dataclasses to and from the JSON dicts stored beside checkpoints."""
from dataclasses import asdict, fields


class ConfigDict:
    """`to_dict` / `from_dict` for a config dataclass; keys it does not know are ignored,
    so configs written by other tools (Hugging Face, PaddleNLP) load as they are."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
