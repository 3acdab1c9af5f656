"""CodeGenConfig: the fields of CodeGen's HF config.json, plus named presets."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any

from opencodegen.errors import ConfigError

RELEASED_VOCAB_ROWS = 51200
GPT2_EOS = 50256


@dataclasses.dataclass
class CodeGenConfig:
    """Hyper-parameters of a CodeGen model, named as in the released config.json files.

    Unknown keys of a loaded config.json are kept in `extra` and written back on save.
    """

    vocab_size: int = RELEASED_VOCAB_ROWS
    n_positions: int = 2048
    n_ctx: int = 2048
    n_embd: int = 1024
    n_layer: int = 20
    n_head: int = 16
    rotary_dim: int = 32
    n_inner: int | None = None
    activation_function: str = "gelu_new"
    resid_pdrop: float = 0.0
    embd_pdrop: float = 0.0
    attn_pdrop: float = 0.0
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    use_cache: bool = True
    bos_token_id: int = 1
    eos_token_id: int = GPT2_EOS
    tie_word_embeddings: bool = False
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def inner_dim(self) -> int:
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    def validate(self) -> None:
        positive = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.n_embd % 4:
            raise ConfigError(f"n_embd={self.n_embd} must be divisible by 4 (CodeGen's fused qkv layout)")
        if self.rotary_dim is None or not 0 < self.rotary_dim <= self.head_dim or self.rotary_dim % 2:
            raise ConfigError(f"rotary_dim={self.rotary_dim} must be even and in (0, head_dim={self.head_dim}]")
        if self.activation_function not in ("gelu_new", "gelu_pytorch_tanh", "gelu"):
            raise ConfigError(f"unsupported activation_function {self.activation_function!r}")
        if self.tie_word_embeddings:
            raise ConfigError("CodeGen's lm_head is not tied to the embedding (tie_word_embeddings must be false)")

    def num_parameters(self) -> int:
        d, v, L, f = self.n_embd, self.vocab_size, self.n_layer, self.inner_dim
        block = 2 * d + 3 * d * d + d * d + (d * f + f) + (f * d + d)
        return v * d + L * block + 2 * d + (d * v + v)

    # ---- config.json -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CodeGenConfig:
        data = dict(data)
        model_type = data.get("model_type", "codegen")
        if model_type != "codegen":
            raise ConfigError(f"not a CodeGen config: model_type is {model_type!r}")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: data.pop(k) for k in list(data) if k in known}
        for key in ("model_type", "architectures"):
            data.pop(key, None)
        if kwargs.get("eos_token_id") == 2 and kwargs.get("vocab_size", RELEASED_VOCAB_ROWS) >= GPT2_EOS:
            warnings.warn(
                "config.json says eos_token_id=2 (the token '#'), a known bug of early CodeGen hub configs; "
                "using 50256",
                stacklevel=2,
            )
            kwargs["eos_token_id"] = GPT2_EOS
        try:
            return cls(**kwargs, extra=data)
        except TypeError as exc:
            raise ConfigError(f"invalid CodeGen config: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model_type": "codegen", "architectures": ["CodeGenForCausalLM"]}
        out.update(self.extra)
        out.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"})
        return out

    @classmethod
    def from_json_file(cls, path: str | Path) -> CodeGenConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a JSON object")
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def save(self, directory: str | Path, dtype: str | None = None) -> None:
        data = self.to_dict()
        if dtype is not None:
            data["torch_dtype"] = dtype
            data["dtype"] = dtype
        Path(directory, "config.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")

    # ---- presets -----------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str) -> CodeGenConfig:
        try:
            return cls(**PRESETS[name])
        except KeyError:
            raise ConfigError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}") from None


_RELEASED_SHAPES = {
    "350M": dict(n_layer=20, n_embd=1024, n_head=16, rotary_dim=32),
    "2B": dict(n_layer=32, n_embd=2560, n_head=32, rotary_dim=64),
    "6B": dict(n_layer=33, n_embd=4096, n_head=16, rotary_dim=64),
    "16B": dict(n_layer=34, n_embd=6144, n_head=24, rotary_dim=64),
}

PRESETS: dict[str, dict[str, Any]] = {
    f"codegen-{size}-{stage}": dict(shape, vocab_size=RELEASED_VOCAB_ROWS)
    for size, shape in _RELEASED_SHAPES.items()
    for stage in ("nl", "multi", "mono")
}
PRESETS.update(
    {
        # For tests: a few layers, the smallest shapes that still exercise every path.
        "tiny": dict(n_layer=2, n_embd=64, n_head=4, rotary_dim=8, vocab_size=1024, n_positions=512, n_ctx=512),
        # For demos and CPU training runs.
        "small": dict(n_layer=6, n_embd=256, n_head=8, rotary_dim=16, vocab_size=4096, n_positions=1024, n_ctx=1024),
        "base": dict(n_layer=8, n_embd=512, n_head=8, rotary_dim=32, vocab_size=8192, n_positions=1024, n_ctx=1024),
        # The embedded default model (configs/default-model.yaml): 18.7M parameters, 37 MB in fp16.
        "demo": dict(n_layer=7, n_embd=384, n_head=6, rotary_dim=32, vocab_size=8192, n_positions=1024, n_ctx=1024),
    }
)
