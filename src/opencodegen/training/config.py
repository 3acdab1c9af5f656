"""`TrainConfig`: every setting of a training run, read from YAML or TOML plus `key=value` overrides.

The file is flat (one key per setting, see the field comments); `model_overrides` is the only
mapping. Values are coerced to the declared type, so YAML's `lr: 3e-4` (a string for PyYAML)
and command-line overrides such as `lr=1e-4` or `model_overrides.n_layer=4` work as expected.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from opencodegen.checkpoint.lora import LoraSettings
from opencodegen.errors import ConfigError

PRECISIONS = ("bf16", "fp32")
STRATEGIES = ("auto", "none", "ddp", "fsdp")
DEVICES = ("auto", "cpu", "cuda")
CHECKPOINT_FORMATS = ("auto", "full", "sharded")


@dataclasses.dataclass
class TrainConfig:
    """Settings of one training run (stage). Batch sizes count sequences of the dataset's seq_len."""

    # model: a preset trained from scratch, or `init_from` (weights only: fresh optimizer, step 0)
    model: str = "tiny"  # preset name of opencodegen.config.PRESETS
    model_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)  # CodeGenConfig fields over the preset
    init_from: str | None = None  # HF checkpoint directory or hub id (stage transition, fine-tuning)
    tokenizer: str | None = None  # default: init_from's directory, else the data manifest's tokenizer
    # data: a directory made by `opencodegen data build`
    data: str | None = None
    train_split: str = "train"
    val_split: str | None = "val"  # null: no validation
    shuffle: bool = True
    # batch
    batch_size: int = 8  # global sequences per optimizer step (all processes together)
    micro_batch_size: int = 8  # sequences per process per forward/backward; the rest is accumulation
    # optimizer (CodeGen: AdamW 0.9/0.999/1e-8, decay 0.1 on weight matrices, clip 1.0, z-loss 1e-4)
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    max_steps: int = 1000
    max_time: float | None = None  # seconds of wall time for the run (resumes add up); see WarmupCosine
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    grad_clip: float = 1.0  # global norm; 0 disables
    z_loss: float = 1e-4
    # precision and speed
    precision: str = "bf16"  # bf16 autocast over fp32 master weights, or fp32
    gradient_checkpointing: bool = False  # recompute each block in backward
    compile: bool = False  # torch.compile every block
    threads: int | None = None  # torch CPU threads (default: torch's choice)
    # distributed (launch with torchrun for several processes)
    strategy: str = "auto"  # auto: ddp when several processes, else none; fsdp: FSDP2 fully_shard
    fsdp_cpu_offload: bool = False  # FSDP2 CPUOffloadPolicy: parameters, gradients, optimizer on CPU
    device: str = "auto"  # auto: cuda when available
    # evaluation and logging
    eval_every: int = 100  # steps; 0: only at the end
    eval_batches: int = 20  # global batches of validation data per evaluation
    log_every: int = 10
    tensorboard: bool = True  # when tensorboard is installed
    peak_tflops: float | None = None  # per device, for MFU (known GPUs are detected)
    # checkpoints
    out_dir: str = "runs/train"
    save_every: int = 500  # steps; 0: only at the end
    checkpoint_format: str = "auto"  # full (one writer), sharded (every rank its shards), auto: sharded with fsdp
    keep_last: int = 3
    export_final: bool = True  # write {out_dir}/final as an HF CodeGen directory at the end
    seed: int = 0
    # LoRA fine-tuning of init_from: {r, alpha, dropout, targets, base_dtype, rslora} (see opencodegen.checkpoint.lora)
    lora: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for name in ("batch_size", "micro_batch_size", "max_steps", "keep_last", "log_every", "eval_batches"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_every", "save_every", "weight_decay", "grad_clip", "z_loss", "lr"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_time is not None and self.max_time <= 0:
            raise ConfigError(f"max_time must be a positive number of seconds, got {self.max_time}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not (0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0) or self.eps <= 0:
            raise ConfigError("beta1 and beta2 must be in [0, 1) and eps > 0")
        for name, allowed in (("precision", PRECISIONS), ("strategy", STRATEGIES), ("device", DEVICES),
                              ("checkpoint_format", CHECKPOINT_FORMATS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")
        if self.init_from and self.model_overrides:
            raise ConfigError("model_overrides apply to a preset; an init_from checkpoint keeps its own config")
        if self.lora is not None:
            settings = self.lora_settings()
            if not self.init_from:
                raise ConfigError("lora fine-tunes existing weights: set init_from to the base model's directory "
                                  "or hub id")
            if self.checkpoint_format == "sharded":
                raise ConfigError("a LoRA run's checkpoints hold only the adapters, in one file; use "
                                  "checkpoint_format auto or full")
            if self.strategy == "fsdp" and settings.base_dtype != "fp32":
                raise ConfigError(f"lora.base_dtype {settings.base_dtype} with strategy fsdp: FSDP2 needs one dtype "
                                  "for all parameters; use base_dtype fp32 or strategy ddp")

    def sharded_checkpoints(self, strategy: str) -> bool:
        """Whether checkpoints are sharded, for the resolved `strategy`: `auto` shards under FSDP
        (except LoRA runs, whose adapters are small)."""
        if self.checkpoint_format == "auto":
            return strategy == "fsdp" and self.lora is None
        return self.checkpoint_format == "sharded"

    def lora_settings(self) -> LoraSettings | None:
        """The validated `lora` mapping (None for full fine-tuning)."""
        return None if self.lora is None else LoraSettings.from_mapping(self.lora)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # ---- loading ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
        """Build from a mapping plus `key=value` overrides; ConfigError names any bad key or value."""
        if not isinstance(data, dict):
            raise ConfigError(f"a training config must be a mapping of settings, got {type(data).__name__}")
        merged = dict(data)
        for item in overrides:
            key, sep, raw = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"override {item!r} is not KEY=VALUE")
            value = yaml.safe_load(raw) if raw.strip() else None
            head, dot, sub = key.strip().partition(".")
            if dot:
                if head not in ("model_overrides", "lora"):
                    raise ConfigError(f"override {key!r}: only model_overrides.<field> and lora.<field> take a dotted key")
                merged[head] = {**(merged.get(head) or {}), sub: value}
            else:
                merged[head] = value
        hints = typing.get_type_hints(cls)
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in merged.items():
            if key not in fields:
                near = difflib.get_close_matches(str(key), fields, n=1)
                raise ConfigError(f"unknown training setting {key!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
            kwargs[key] = _coerce(key, value, hints[key])
        return cls(**kwargs)

    @classmethod
    def load(cls, path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
        """Read a .yaml/.yml/.toml file (or start from defaults when `path` is None)."""
        return cls.from_dict(read_config_file(path) if path else {}, overrides)


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc})") from None
    if path.suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            raise ConfigError(f"{path}: TOML configs need Python >= 3.11; use YAML") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML ({exc})") from None
    elif path.suffix in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML ({exc})") from None
    else:
        raise ConfigError(f"{path}: unknown config format (use .yaml, .yml or .toml)")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    return data


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """`value` as the declared type `hint` (int, float, str, bool, dict, optionally None)."""
    args = typing.get_args(hint)
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if optional else hint
    if value is None or (optional and value in ("null", "None", "none", "")):
        if optional:
            return None
        raise ConfigError(f"{name} must not be null")
    origin = typing.get_origin(base) or base
    try:
        if origin is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
                return value.lower() in ("true", "yes", "on", "1")
            raise ValueError
        if origin is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if origin is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if origin is dict:
            if not isinstance(value, dict):
                raise ValueError
            return dict(value)
        if not isinstance(value, str | int | float) or isinstance(value, bool):  # str settings
            raise ValueError
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected {getattr(origin, '__name__', origin)}, got {value!r}") from None
