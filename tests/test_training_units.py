"""Training building blocks: run config parsing, optimizer groups, schedule, loss, RNG capture."""

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from opencodegen.config import CodeGenConfig
from opencodegen.errors import ConfigError
from opencodegen.model import CodeGenForCausalLM
from opencodegen.training.checkpointing import rng_state, set_rng_state
from opencodegen.training.config import TrainConfig
from opencodegen.training.loss import lm_loss
from opencodegen.training.metrics import flops_per_token
from opencodegen.training.optim import WarmupCosine, build_optimizer, param_groups


def test_yaml_and_toml_configs_with_overrides(tmp_path):
    (tmp_path / "run.yaml").write_text("model: small\nlr: 3e-4\nmax_steps: 100\nmodel_overrides:\n  n_layer: 2\n")
    cfg = TrainConfig.load(tmp_path / "run.yaml", ["lr=1e-4", "model_overrides.vocab_size=640", "compile=true"])
    assert (cfg.model, cfg.lr, cfg.max_steps, cfg.compile) == ("small", 1e-4, 100, True)
    assert isinstance(cfg.lr, float) and cfg.model_overrides == {"n_layer": 2, "vocab_size": 640}
    (tmp_path / "run.toml").write_text('model = "tiny"\nbatch_size = 16\nval_split = "none"\n')
    cfg = TrainConfig.load(tmp_path / "run.toml")
    assert (cfg.model, cfg.batch_size, cfg.val_split) == ("tiny", 16, None)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["lrr=1"], "did you mean 'lr'"),
        (["max_steps=1.5"], "max_steps: expected int"),
        (["precision=fp16"], "precision must be one of"),
        (["batch_size=0"], "batch_size must be >= 1"),
        (["max_time=-5"], "max_time must be a positive number of seconds"),
        (["max_time=soon"], "max_time"),
        (["compile=maybe"], "compile: expected bool"),
        (["lr"], "not KEY=VALUE"),
        (["optim.lr=1"], "only model_overrides"),
        (["init_from=x", "model_overrides.n_layer=2"], "keeps its own config"),
    ],
)
def test_bad_settings_are_clear_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.load(None, overrides)


@pytest.mark.parametrize("path", sorted(Path(__file__).parent.parent.glob("configs/*.yaml")), ids=lambda p: p.name)
def test_example_configs_parse(path):
    TrainConfig.load(path)


def test_bad_config_files(tmp_path):
    (tmp_path / "a.yaml").write_text("- not a mapping\n")
    (tmp_path / "b.json").write_text("{}")
    with pytest.raises(ConfigError, match="mapping"):
        TrainConfig.load(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match="unknown config format"):
        TrainConfig.load(tmp_path / "b.json")
    with pytest.raises(ConfigError, match="no such config file"):
        TrainConfig.load(tmp_path / "missing.yaml")


def test_weight_decay_on_matrices_only_including_the_embedding():
    model = CodeGenForCausalLM(CodeGenConfig.from_preset("tiny"))
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = param_groups(model, 0.1)
    decayed = {names[id(p)] for p in decay["params"]}
    assert "transformer.wte.weight" in decayed and "lm_head.weight" in decayed
    assert "transformer.h.0.attn.qkv.weight" in decayed and "transformer.h.1.mlp.fc_out.weight" in decayed
    assert not any(n.endswith("bias") or ".ln_" in n for n in decayed)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    opt = build_optimizer(model, TrainConfig())
    assert opt.defaults["betas"] == (0.9, 0.999) and opt.defaults["eps"] == 1e-8


def test_warmup_then_cosine_to_a_tenth():
    schedule = WarmupCosine(lr=2.0, warmup_steps=10, total_steps=110, min_ratio=0.1)
    assert schedule(0) == pytest.approx(0.2) and schedule(9) == pytest.approx(2.0)
    assert schedule(10) == pytest.approx(2.0)
    assert schedule(60) == pytest.approx(1.1)  # half-way down the cosine
    assert schedule(110) == pytest.approx(0.2) and schedule(500) == pytest.approx(0.2)
    steps = [schedule(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(steps, steps[1:]))
    model = CodeGenForCausalLM(CodeGenConfig.from_preset("tiny"))
    opt = build_optimizer(model, TrainConfig())
    assert schedule.apply(opt, 60) == pytest.approx(1.1)
    assert [g["lr"] for g in opt.param_groups] == [schedule(60)] * 2
    # a time budget: the cosine follows the larger of the step and time fractions
    assert schedule(60, time_fraction=0.5) == pytest.approx(1.1) and schedule(35, time_fraction=0.5) == pytest.approx(1.1)
    assert schedule(60, time_fraction=1.0) == pytest.approx(0.2) and schedule(5, time_fraction=1.0) == pytest.approx(1.2)


def reference_objective(logits, labels, z_loss):
    flat = logits.float().flatten(0, 1)
    log_z = torch.logsumexp(flat, -1)
    ce = F.cross_entropy(flat, labels.flatten())
    return ce + z_loss * (log_z**2).mean(), ce


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_loss_and_gradient_match_the_composed_definition(monkeypatch, dtype):
    monkeypatch.setattr("opencodegen.training.loss.CHUNK_ROWS", 4)  # several chunks and a short last one
    torch.manual_seed(0)
    base = torch.randn(2, 7, 50) * 4
    labels = torch.randint(0, 50, (2, 7))
    ours_in = base.to(dtype).requires_grad_()
    ref_in = base.to(dtype).requires_grad_()
    objective, ce = lm_loss(ours_in, labels, 1e-2)
    ref_objective, ref_ce = reference_objective(ref_in, labels, 1e-2)
    (3 * objective).backward()
    (3 * ref_objective).backward()
    assert objective.dtype == ce.dtype == torch.float32 and not ce.requires_grad
    torch.testing.assert_close(objective, ref_objective)
    torch.testing.assert_close(ce, ref_ce)
    assert ours_in.grad.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(ours_in.grad.float(), ref_in.grad.float(), atol=tol, rtol=tol)


def test_rng_state_round_trip():
    state = rng_state()
    first = (random.random(), np.random.rand(), torch.rand(3))
    set_rng_state(state)
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert first[:2] == again[:2] and torch.equal(first[2], again[2])


def test_model_flops_per_token():
    cfg = CodeGenConfig.from_preset("codegen-350M-mono")
    dense = cfg.num_parameters() - cfg.vocab_size * cfg.n_embd
    assert flops_per_token(cfg, 2048) == 6 * dense + 12 * 20 * 1024 * 2048
    assert math.isclose(flops_per_token(cfg, 2048) / 1e9, 2.33, rel_tol=0.01)
