"""The training loop: data-parallel (DDP / FSDP2) next-token training with exact resume.

One optimizer step consumes one global batch of `batch_size` sequences from a `BatchIterator`
(each process its contiguous share, cut into micro-batches for gradient accumulation), so
the trajectory depends on the global batch only, not on the number of processes. Gradients
are averaged over every sequence of the global batch, in fp32 master weights; with
``precision: bf16`` the forward and backward run under bf16 autocast.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_optimizer_state_dict,
    set_state_dict,
)

from opencodegen.checkpoint import load_model, lora
from opencodegen.config import CodeGenConfig
from opencodegen.data.dataset import BatchIterator, PackedDataset
from opencodegen.errors import CheckpointError, ConfigError, DataError, OpenCodeGenError
from opencodegen.model import CodeGenForCausalLM
from opencodegen.training import checkpointing as ckpt
from opencodegen.training import distributed as dist_utils
from opencodegen.training.config import TrainConfig
from opencodegen.training.loss import lm_loss
from opencodegen.training.metrics import MetricsLog, flops_per_token, peak_flops, plot_losses
from opencodegen.training.optim import WarmupCosine, build_optimizer
from opencodegen.training.signals import stop_through_checkpoint_io, terminate_as_exception


class TokenDataset(Protocol):
    """What the trainer reads: `PackedDataset` or any object with the same members."""

    seq_len: int
    path: Any
    split: str
    fingerprint: str

    def __len__(self) -> int: ...

    def batch(self, indices: Any) -> torch.Tensor: ...


class Trainer:
    """Builds the model, data, optimizer and process group of a run; `fit()` trains it.

    `resume`: None (a fresh run; refused when out_dir already has checkpoints), "auto" (the
    newest good checkpoint of out_dir, else a fresh start) or a checkpoint / run directory.
    `train_dataset` / `val_dataset` replace the config's `data` directory (e.g. in-memory data).
    """

    def __init__(
        self,
        config: TrainConfig,
        resume: str | None = None,
        *,
        train_dataset: TokenDataset | None = None,
        val_dataset: TokenDataset | None = None,
    ) -> None:
        self.config = config
        if config.threads:
            torch.set_num_threads(config.threads)
        self.env = dist_utils.setup(config.strategy, config.device)
        self.metrics: MetricsLog | None = None
        try:
            self._build(resume, train_dataset, val_dataset)
        except BaseException:
            self.close(failed=True)
            raise

    # ---- construction ----------------------------------------------------------------------
    def say(self, message: str) -> None:
        if self.env.is_main:
            print(message, flush=True)

    def _build(self, resume: str | None, train_dataset: TokenDataset | None, val_dataset: TokenDataset | None) -> None:
        cfg, env = self.config, self.env
        self.out_dir = Path(cfg.out_dir)
        self.lora = cfg.lora_settings()
        resume_from = self._choose_checkpoint(resume)
        self._build_data(train_dataset, val_dataset)
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        model, model_dir = self._initial_model(resume_from)
        self.tokenizer_dir = self._prepare_tokenizer(model_dir)
        if model_dir is None and self.tokenizer_dir is not None:
            self._adopt_special_tokens(model.config)
        self.model_config: CodeGenConfig = model.config
        self._check_data_fits_model()
        if self.lora is not None:
            lora.apply_lora(model, self.lora)
            if resume_from is not None:
                lora.load_adapter_weights(model, resume_from)
        model.to(env.device).train()
        model.gradient_checkpointing = cfg.gradient_checkpointing
        if cfg.compile:
            for block in model.transformer.h:
                block.compile()
        self.model = dist_utils.wrap_model(model, env, cfg.fsdp_cpu_offload)
        dist_utils.keep_until_exit(self.model)
        self.raw_model = dist_utils.unwrap(self.model)
        self.optimizer = build_optimizer(self.model, cfg)
        self.schedule = WarmupCosine.from_config(cfg)
        self.step = 0
        self.tokens = 0
        self.elapsed = 0.0  # seconds spent in fit(), over every run of this out_dir
        seed = cfg.seed + env.rank  # dropout differs between ranks
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)
        if resume_from is not None:
            self._restore(resume_from)
        if env.is_main:
            self.metrics = MetricsLog(self.out_dir, self.step if resume_from is not None else None, cfg.tensorboard)
        self.tokens_per_step = cfg.batch_size * self.seq_len
        self.flops_per_token = flops_per_token(self.model_config, self.seq_len)
        self.peak = peak_flops(env.device, cfg.peak_tflops)
        self.autocast = torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
        trainable = sum(p.numel() for p in self.raw_model.parameters() if p.requires_grad)
        self.say(
            f"model: {self.model_config.num_parameters() / 1e6:.1f}M parameters"
            + (f" ({trainable / 1e6:.3f}M trainable: LoRA)" if self.lora else "") + f"; {env.world_size} process(es), "
            f"strategy {env.strategy}, device {env.device.type}, precision {cfg.precision}; global batch "
            f"{cfg.batch_size} x {self.seq_len} tokens = {self.accum} micro-batch(es) of {cfg.micro_batch_size} "
            f"per process; steps {self.step} -> {cfg.max_steps}"
            + (f" or {cfg.max_time:g} s ({self.elapsed:.0f} s spent)" if cfg.max_time else "")
        )

    @property
    def base_model(self) -> str | None:
        """What a LoRA adapter names as its base: init_from as an absolute path when it is a local directory."""
        init = self.config.init_from
        if init and Path(init).expanduser().is_dir():
            return str(Path(init).expanduser().resolve())
        return init

    def _choose_checkpoint(self, resume: str | None) -> Path | None:
        """Rank 0 verifies and picks the checkpoint; every rank gets its path (or the error)."""
        choice: tuple[Path | None, OpenCodeGenError | None] = (None, None)
        if self.env.is_main:
            try:
                if resume is None:
                    if ckpt.list_checkpoints(ckpt.checkpoints_root(self.out_dir)):
                        raise ConfigError(f"{self.out_dir} already holds checkpoints; resume with --resume auto "
                                          "or choose another out_dir")
                else:
                    choice = (ckpt.find_checkpoint(resume, self.out_dir, say=self.say), None)
                    if choice[0] is None:
                        self.say(f"no checkpoint in {self.out_dir}; starting from scratch")
                self.out_dir.mkdir(parents=True, exist_ok=True)
            except OpenCodeGenError as exc:
                choice = (None, exc)
        path, error = dist_utils.broadcast_object(choice, self.env)
        if error is not None:
            raise error
        return path

    def _build_data(self, train_dataset: TokenDataset | None, val_dataset: TokenDataset | None) -> None:
        cfg, env = self.config, self.env
        if train_dataset is None:
            if not cfg.data:
                raise ConfigError("no training data: set `data` to a directory made by `opencodegen data build`")
            train_dataset = PackedDataset(cfg.data, cfg.train_split)
            if val_dataset is None and cfg.val_split and cfg.val_split in train_dataset.manifest["splits"]:
                val_dataset = PackedDataset(cfg.data, cfg.val_split)
        self.seq_len = int(train_dataset.seq_len)
        if cfg.batch_size % env.world_size:
            raise ConfigError(f"batch_size {cfg.batch_size} is not divisible by the {env.world_size} processes")
        local = cfg.batch_size // env.world_size
        if local % cfg.micro_batch_size:
            raise ConfigError(f"batch_size / processes = {local} is not a multiple of micro_batch_size "
                              f"{cfg.micro_batch_size}")
        self.accum = local // cfg.micro_batch_size
        self.train_dataset = train_dataset
        self.train_iter = BatchIterator(train_dataset, cfg.batch_size, rank=env.rank, world_size=env.world_size,
                                        seed=cfg.seed, shuffle=cfg.shuffle)
        if val_dataset is not None and len(val_dataset) < env.world_size:
            self.say(f"validation split has {len(val_dataset)} sequences, fewer than the processes; no validation")
            val_dataset = None
        self.val_dataset = val_dataset

    def _prepare_tokenizer(self, model_dir: Path | None) -> Path | None:
        """Copy the run's tokenizer into {out_dir}/tokenizer (checked by loading it). Source: the
        `tokenizer` setting, else the init_from checkpoint, else the data manifest's tokenizer,
        else the copy a previous run of this out_dir made."""
        cfg = self.config
        manifest = getattr(self.train_dataset, "manifest", None)
        target = self.out_dir / "tokenizer"
        candidates = [cfg.tokenizer, model_dir if cfg.init_from else None,
                      (manifest or {}).get("tokenizer", {}).get("path"), target if target.is_dir() else None]
        source = next((str(c) for c in candidates if c is not None), None)
        if source is None:
            self.say("no tokenizer given (tokenizer, init_from or data manifest); checkpoints will hold none")
            return None
        if not Path(source).is_dir():
            raise ConfigError(f"tokenizer directory {source!r} (from the `tokenizer` setting or the data manifest) "
                              "does not exist here; set `tokenizer` to the tokenizer the data was built with")
        if self.env.is_main:
            from opencodegen.tokenizer import CodeGenTokenizer

            tokenizer = CodeGenTokenizer.from_pretrained(source)
            if Path(source).resolve() != target.resolve():
                tokenizer.save_pretrained(target)
            if manifest and manifest.get("tokenizer", {}).get("vocab_size") not in (None, len(tokenizer)):
                self.say(f"warning: the data was tokenized with {manifest['tokenizer']['vocab_size']} ids, "
                         f"the tokenizer {source} has {len(tokenizer)}")
        dist_utils.barrier(self.env)
        return target

    def _adopt_special_tokens(self, config: CodeGenConfig) -> None:
        """A new preset model ends text with its tokenizer's EOS (the presets carry the released ids)."""
        from opencodegen.tokenizer import CodeGenTokenizer

        tokenizer = CodeGenTokenizer.from_pretrained(self.tokenizer_dir)
        config.eos_token_id = tokenizer.eos_token_id
        config.bos_token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id

    def _initial_model(self, resume_from: Path | None) -> tuple[CodeGenForCausalLM, Path | None]:
        """The starting weights and the directory they came from (None for a new preset model)."""
        cfg = self.config
        if resume_from is not None and ckpt.is_sharded(resume_from):  # weights come in `_restore`
            return CodeGenForCausalLM(CodeGenConfig.from_json_file(resume_from / "config.json")), resume_from
        if resume_from is not None and self.lora is None:  # the checkpoint holds every weight
            return load_model(resume_from, dtype=torch.float32)[1], resume_from
        if cfg.init_from:  # with LoRA also on resume: the checkpoint holds only the adapters
            directory, model = load_model(cfg.init_from, dtype=torch.float32)
            if resume_from is None:
                self.say(f"initialized from {directory} (fresh optimizer, step 0)"
                         + (f"; LoRA r={self.lora.r} on {', '.join(self.lora.targets)}, base frozen in "
                            f"{self.lora.base_dtype}" if self.lora else ""))
            return model, directory
        config = CodeGenConfig.from_preset(cfg.model)
        try:
            config = dataclasses.replace(config, **cfg.model_overrides)
        except TypeError as exc:
            raise ConfigError(f"model_overrides: {exc}") from None
        return CodeGenForCausalLM(config), None

    def _check_data_fits_model(self) -> None:
        """Refuse data the model cannot take: more token ids than embedding rows, or sequences
        longer than its context (otherwise a traceback from the first forward pass)."""
        if self.seq_len > self.model_config.n_positions:
            raise ConfigError(f"the data holds {self.seq_len}-token sequences but the model's context is "
                              f"n_positions={self.model_config.n_positions}: rebuild it with `opencodegen data build "
                              f"--seq-len {self.model_config.n_positions}` (or less)")
        vocab = self.model_config.vocab_size
        manifest = getattr(self.train_dataset, "manifest", None)
        data_vocab = manifest.get("tokenizer", {}).get("vocab_size") if manifest else None
        if data_vocab is not None and data_vocab > vocab:
            raise ConfigError(f"the data uses {data_vocab} token ids but the model has only {vocab} embedding rows")

    def _restore(self, path: Path) -> None:
        """Optimizer, scheduler, counters, data cursor and RNG of checkpoint `path` (the weights
        were loaded into the model before it was wrapped)."""
        state = ckpt.load_trainer_state(path)
        if ckpt.is_sharded(path):
            self._load_shards(path)
        else:
            set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"],
                                     options=StateDictOptions(full_state_dict=True))
        if state["scheduler"] != self.schedule.state_dict():
            self.say(f"note: the schedule changed from {state['scheduler']} to {self.schedule.state_dict()}; "
                     f"the current one applies from step {state['step']}")
        self.step = int(state["step"])
        self.tokens = int(state["tokens"])
        self.elapsed = float(state.get("elapsed_s", 0.0))
        try:
            self.train_iter.load_state_dict(state["data"])
        except DataError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
        rngs = state["rng"]
        if len(rngs) == self.env.world_size:
            ckpt.set_rng_state(rngs[self.env.rank])
        else:
            self.say(f"note: the checkpoint was written by {len(rngs)} processes, this run has "
                     f"{self.env.world_size}; RNG streams restart from the seed (data order is exact)")
        self.say(f"resumed from {path} at step {self.step}")

    # ---- training --------------------------------------------------------------------------
    def train_step(self, batch: torch.Tensor) -> torch.Tensor:
        """One optimizer step on this process's share [local, seq_len + 1] of a global batch.

        Returns [objective, cross-entropy, gradient norm] on the device without synchronizing:
        this process's means over its sequences, and the global norm before clipping.
        """
        cfg, env = self.config, self.env
        micro_batches = batch.split(cfg.micro_batch_size)
        sums = torch.zeros(2, dtype=torch.float32, device=env.device)
        for i, micro in enumerate(micro_batches):
            micro = micro.to(env.device, non_blocking=True)
            with dist_utils.gradient_sync(self.model, env, i == len(micro_batches) - 1):
                with self.autocast:
                    logits = self.model(micro[:, :-1]).logits
                loss, ce = lm_loss(logits, micro[:, 1:], cfg.z_loss)
                (loss / len(micro_batches)).backward()
            sums += torch.stack((loss.detach(), ce))
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        if hasattr(norm, "full_tensor"):  # FSDP2: a replicated DTensor
            norm = norm.full_tensor()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return torch.cat((sums / len(micro_batches), norm.reshape(1).float()))

    @torch.no_grad()
    def evaluate(self) -> dict[str, float] | None:
        """Mean cross-entropy and perplexity of the first `eval_batches` global batches of the
        validation split (the same sequences on any number of processes)."""
        if self.val_dataset is None:
            return None
        cfg, env = self.config, self.env
        wanted = min(cfg.eval_batches * cfg.batch_size, len(self.val_dataset))
        per_rank = min(cfg.micro_batch_size, wanted // env.world_size)
        batches = BatchIterator(self.val_dataset, per_rank * env.world_size, rank=env.rank,
                                world_size=env.world_size, shuffle=False, loop=False)
        count = wanted // (per_rank * env.world_size)
        total = torch.zeros((), dtype=torch.float64)
        self.model.eval()
        for _ in range(count):
            micro = next(batches).to(env.device)
            with self.autocast:
                logits = self.model(micro[:, :-1]).logits
            total += lm_loss(logits, micro[:, 1:], 0.0)[1].double().cpu()
        self.model.train()
        loss = float(dist_utils.all_reduce_mean(total / count, env))
        return {"loss": loss, "ppl": math.exp(min(loss, 700.0))}

    def _spent(self, before: float, since: float) -> float:
        """Update `elapsed` (`before` plus the time since `since`, as the main process measures it);
        returns the fraction of `max_time` spent (0 without a budget)."""
        self.elapsed = dist_utils.broadcast_object(before + time.perf_counter() - since, self.env)
        return self.elapsed / self.config.max_time if self.config.max_time else 0.0

    def fit(self) -> dict[str, Any]:
        """Train to `max_steps` or `max_time` with logging, validation and checkpoints; returns a summary.

        The time budget is checked at each log step (every `log_every` steps)."""
        cfg = self.config
        fit_start, before = time.perf_counter(), self.elapsed
        spent = self._spent(before, fit_start)
        ran = self.step < cfg.max_steps and spent < 1.0
        window: list[torch.Tensor] = []
        last_val: dict[str, float] | None = None
        evaluated = saved = self.step
        started = time.perf_counter()
        completed = False
        try:
            while self.step < cfg.max_steps and spent < 1.0:
                lr = self.schedule.apply(self.optimizer, self.step, spent)
                window.append(self.train_step(next(self.train_iter)))
                self.step += 1
                self.tokens += self.tokens_per_step
                if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                    self._log_train(torch.stack(window), lr, time.perf_counter() - started)
                    window = []
                    spent = self._spent(before, fit_start)
                if cfg.eval_every and self.step % cfg.eval_every == 0:
                    last_val, evaluated = self._log_val(), self.step
                if cfg.save_every and self.step % cfg.save_every == 0:
                    self.save()
                    saved = self.step
                if not window:
                    started = time.perf_counter()
            if ran and evaluated != self.step:
                last_val = self._log_val()
            if ran and saved != self.step:
                self.save()
            final = self._finish()
            dist_utils.barrier(self.env)  # every rank leaves together, after rank 0's export
            completed = True
        finally:
            self.close(failed=not completed)
        return {"step": self.step, "tokens": self.tokens, "val": last_val, "final": final}

    def close(self, failed: bool = False) -> None:
        """Release what the run holds, in order: the metrics log (and TensorBoard's writer
        thread), then the process group (see `distributed.teardown` for `failed`)."""
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        dist_utils.teardown(self.env, failed)

    def _log_train(self, window: torch.Tensor, lr: float, seconds: float) -> None:
        """Log the mean of the window's steps ([steps, 3] from `train_step`) over all processes."""
        steps = len(window)
        objective, ce, norm = dist_utils.all_reduce_mean(window.double().mean(0), self.env).tolist()
        tokens_per_s = self.tokens_per_step * steps / max(seconds, 1e-9)
        tflops = tokens_per_s * self.flops_per_token / 1e12
        record = {
            "split": "train", "step": self.step, "loss": ce, "objective": objective, "lr": lr,
            "grad_norm": norm, "tokens": self.tokens, "tokens_per_s": tokens_per_s, "tflops": tflops,
            "mfu": tflops * 1e12 / (self.peak * self.env.world_size) if self.peak else None,
        }
        if self.metrics is not None:
            self.metrics.log(record)
        mfu = f" | MFU {record['mfu']:.1%}" if record["mfu"] is not None else ""
        self.say(f"step {self.step}/{self.config.max_steps} | loss {ce:.4f} | lr {lr:.2e} | grad norm {norm:.3f} | "
                 f"{tokens_per_s:,.0f} tok/s | {tflops:.3g} TFLOP/s{mfu}")

    def _log_val(self) -> dict[str, float] | None:
        result = self.evaluate()
        if result is None:
            return None
        if self.metrics is not None:
            self.metrics.log({"split": "val", "step": self.step, **result})
        self.say(f"step {self.step} | validation loss {result['loss']:.4f} | perplexity {result['ppl']:.2f}")
        return result

    # ---- checkpoints -----------------------------------------------------------------------
    def save(self) -> Path | None:
        """Write a checkpoint of the current step (collective: every rank must call it).

        Sharded: every rank writes its own shards of the model and optimizer state
        (torch.distributed.checkpoint) and hashes them; otherwise the full state is gathered to
        rank 0, which writes it. Either way rank 0 finishes the checkpoint (manifest, rename)."""
        sharded = self.config.sharded_checkpoints(self.env.strategy)
        options = StateDictOptions(full_state_dict=not sharded, cpu_offload=not sharded)
        model_state, optim_state = get_state_dict(self.model, self.optimizer, options=options)
        rngs = dist_utils.gather_objects(ckpt.rng_state(), self.env)
        tmp = dist_utils.broadcast_object(ckpt.start_checkpoint(self.out_dir, self.step) if self.env.is_main else None,
                                          self.env)
        hashed: dict[str, Any] = {}
        if sharded:
            with stop_through_checkpoint_io(), contextlib.nullcontext() if self.env.active else ckpt.single_process_dcp():
                dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=tmp / ckpt.SHARDED,
                         no_dist=not self.env.active)
            mine = ckpt.file_entries(tmp, ckpt.shard_files(tmp, self.env.rank))
            for entries in dist_utils.gather_objects(mine, self.env):
                hashed.update(entries)
        path = None
        if self.env.is_main:
            trainer_state = {
                "scheduler": self.schedule.state_dict(),
                "step": self.step,
                "tokens": self.tokens,
                "elapsed_s": self.elapsed,
                "data": self.train_iter.state_dict(),
                "rng": rngs,
                "world_size": self.env.world_size,
                "config": self.config.to_dict(),
            }
            if sharded:
                self.model_config.save(tmp)
            elif self.lora is not None:
                trainer_state["optimizer"] = optim_state
                adapters = {name: t for name, t in model_state.items() if lora.is_lora_key(name)}
                lora.write_adapter(tmp, adapters, self.lora, self.base_model)
            else:
                trainer_state["optimizer"] = optim_state
                ckpt.model_writer(self.model_config, model_state)(tmp)
            path = ckpt.finish_checkpoint(tmp, self.step, trainer_state, self.tokenizer_dir, self.config.keep_last,
                                          hashed)
            self.say(f"saved checkpoint {path}" + (" (sharded)" if sharded else ""))
        dist_utils.barrier(self.env)
        return path

    def _load_shards(self, path: Path) -> None:
        """Model and optimizer state from the shards of checkpoint `path`, resharded onto this
        run's processes (torch.distributed.checkpoint matches them by parameter name)."""
        model_state, optim_state = get_state_dict(self.model, self.optimizer)
        state = {"model": model_state, "optim": optim_state}
        try:
            with stop_through_checkpoint_io(), contextlib.nullcontext() if self.env.active else ckpt.single_process_dcp():
                dcp.load(state, checkpoint_id=path / ckpt.SHARDED, no_dist=not self.env.active)
        except Exception as exc:
            raise CheckpointError(f"{path / ckpt.SHARDED}: cannot load ({type(exc).__name__}: {exc})") from None
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])

    def _finish(self) -> Path | None:
        """Export the last checkpoint as an HF directory and draw the loss curve (main process)."""
        if not self.env.is_main:
            return None
        final = None
        if self.config.export_final:
            final = self.out_dir / "final"
            last = ckpt.checkpoints_root(self.out_dir) / f"{ckpt.PREFIX}{self.step:08d}"
            if self.lora is not None:
                ckpt.export_adapter(last, final)
                self.say(f"exported {final} (LoRA adapter, peft layout; merge it with `opencodegen convert merge-lora`)")
            else:
                ckpt.export_checkpoint(last, final)
                self.say(f"exported {final} (HF CodeGen directory)")
        plot_losses(self.metrics.records, self.out_dir / "loss.png", title=str(self.out_dir))
        return final


def train(config: TrainConfig, resume: str | None = None) -> dict[str, Any]:
    """Run `config` to the end (the `opencodegen train` entry point); SIGTERM raises
    `signals.Terminated` after the trainer has released its metrics and process group."""
    with terminate_as_exception():
        return Trainer(config, resume).fit()
