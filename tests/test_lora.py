"""LoRA fine-tuning: adapters in peft's layout, merging, loading through every model-loading path,
and LoRA runs of the trainer (only adapters change, validation loss drops, exact resume)."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from opencodegen.checkpoint import load_model
from opencodegen.checkpoint.lora import (
    FrozenLinear,
    LoraLinear,
    LoraSettings,
    apply_lora,
    load_adapter,
    merge_lora,
    save_adapter,
)
from opencodegen.cli import main
from opencodegen.config import CodeGenConfig
from opencodegen.errors import CheckpointError, ConfigError
from opencodegen.model import CodeGenForCausalLM
from opencodegen.tokenizer import CodeGenTokenizer
from opencodegen.training.checkpointing import copy_tokenizer_files
from opencodegen.training.config import TrainConfig
from opencodegen.training.trainer import Trainer
from training_helpers import (
    run,
    run_settings,
    torchrun,
    trajectory,
    write_config,
)

ALL = ("qkv_proj", "out_proj", "fc_in", "fc_out", "lm_head")


@pytest.fixture(scope="module")
def base_dir(corpus, tmp_path_factory):
    """A random tiny model sized to the corpus tokenizer, as an HF directory with the tokenizer."""
    torch.manual_seed(0)
    tokenizer = CodeGenTokenizer.from_pretrained(corpus / "tok")
    config = CodeGenConfig.from_preset("tiny")
    config.vocab_size = 640
    config.eos_token_id = config.bos_token_id = tokenizer.eos_token_id
    directory = tmp_path_factory.mktemp("base") / "tiny"
    CodeGenForCausalLM(config).save_pretrained(directory)
    copy_tokenizer_files(corpus / "tok", directory)
    return directory


def adapted(base_dir, settings: LoraSettings, seed: int = 1) -> CodeGenForCausalLM:
    """The base with adapters whose B is random too (trained adapters are not zero)."""
    _, model = load_model(base_dir)
    torch.manual_seed(seed)
    apply_lora(model, settings)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    return model.eval()


IDS = torch.randint(0, 640, (2, 19), generator=torch.Generator().manual_seed(3))


def test_merged_model_equals_base_plus_adapters_and_peft_layout_matches_hf(base_dir, tmp_path):
    from transformers import CodeGenForCausalLM as HFCodeGen

    settings = LoraSettings(r=4, alpha=8, dropout=0.1, targets=ALL)
    model = adapted(base_dir, settings)
    with torch.no_grad():
        expected = model(IDS).logits
    save_adapter(model, tmp_path / "adapter", settings, str(base_dir))
    assert main(["convert", "merge-lora", str(tmp_path / "adapter"), "--out", str(tmp_path / "merged")]) == 0
    _, merged = load_model(tmp_path / "merged")
    assert not any(isinstance(m, LoraLinear | FrozenLinear) for m in merged.modules())
    with torch.no_grad():
        torch.testing.assert_close(merged(IDS).logits, expected, rtol=0, atol=1e-5)

    # peft's layout on the HF checkpoint: W[module] += (alpha / r) · B A gives the same model
    stored = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert "base_model.model.transformer.h.1.attn.qkv_proj.lora_B.weight" in stored
    assert all(k.startswith("base_model.model.") and k.endswith((".lora_A.weight", ".lora_B.weight")) for k in stored)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"], config["target_modules"]) == ("LORA", 4, 8.0,
                                                                                                  list(ALL))
    reference = HFCodeGen.from_pretrained(base_dir).eval()
    state = reference.state_dict()
    for key, a in stored.items():
        if key.endswith("lora_A.weight"):
            module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            state[module + ".weight"] += 2.0 * stored[key.replace("lora_A", "lora_B")] @ a
    reference.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(reference(IDS).logits, expected, rtol=1e-4, atol=1e-4)


def test_adapters_round_trip_and_load_as_a_model(base_dir, tmp_path):
    settings = LoraSettings(r=2, alpha=4, dropout=0.0, targets=("qkv_proj", "fc_out"))
    model = adapted(base_dir, settings)
    save_adapter(model, tmp_path / "adapter", settings, str(base_dir))
    _, fresh = load_model(base_dir)
    assert load_adapter(fresh, tmp_path / "adapter") == settings
    saved = {n: t for n, t in model.state_dict().items() if "lora_" in n}
    loaded = {n: t for n, t in fresh.state_dict().items() if "lora_" in n}
    assert saved.keys() == loaded.keys() and len(saved) == 8
    assert all(torch.equal(saved[n], loaded[n]) for n in saved)
    with torch.no_grad():
        expected = model(IDS).logits
        torch.testing.assert_close(fresh.eval()(IDS).logits, expected, rtol=0, atol=0)
        # every model-loading path (generate, eval, serve, chat) takes the adapter directory as a model
        directory, merged = load_model(tmp_path / "adapter")
        torch.testing.assert_close(merged(IDS).logits, expected, rtol=0, atol=1e-5)
    assert directory == base_dir  # no tokenizer in the adapter directory: the base's


def test_merge_lora_is_base_weight_plus_scaled_product():
    linear = torch.nn.Linear(6, 9)
    settings = LoraSettings(r=3, alpha=6, rslora=True)
    layer = LoraLinear(linear, settings)
    torch.nn.init.normal_(layer.lora_B.weight)
    merged = layer.merged(torch.float32)
    delta = layer.lora_B.weight @ layer.lora_A.weight * (6 / 3**0.5)
    torch.testing.assert_close(merged.weight, linear.weight + delta)
    torch.testing.assert_close(merged.bias, linear.bias)


@pytest.mark.parametrize("base_dtype, tolerance", [("bf16", 1e-2), ("int8", 3e-2)])
def test_base_held_in_bf16_or_int8(base_dir, base_dtype, tolerance):
    settings = LoraSettings(r=4, targets=("qkv_proj", "fc_in"), base_dtype=base_dtype, dropout=0.0)
    _, reference = load_model(base_dir)
    _, model = load_model(base_dir)
    apply_lora(model, settings)
    frozen = [m for m in model.modules() if isinstance(m, FrozenLinear)]
    assert len(frozen) == 2 * 4 + 1  # 4 linear layers per block (2 adapted, 2 plain) + lm_head
    assert {m.weight.dtype for m in frozen} == {torch.bfloat16 if base_dtype == "bf16" else torch.int8}
    with torch.no_grad():
        ours, expected = model.eval()(IDS).logits, reference(IDS).logits
    assert (ours - expected).abs().max() < tolerance * expected.abs().max()
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model.train()(IDS).logits.float().logsumexp(-1).mean().backward()
    grads = {name: param.grad for name, param in model.named_parameters()}
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if ".lora_" in n)
    assert all(g is None for n, g in grads.items() if ".lora_" not in n)
    merge_lora(model)
    assert all(type(m).__name__ != "FrozenLinear" for m in model.modules())


def test_bad_lora_settings_and_adapters(base_dir, tmp_path):
    with pytest.raises(ConfigError, match="set init_from"):
        TrainConfig(lora={"r": 4})
    with pytest.raises(ConfigError, match="unknown setting"):
        TrainConfig(init_from=str(base_dir), lora={"rank": 4})
    with pytest.raises(ConfigError, match="lora.targets: unknown module"):
        TrainConfig(init_from=str(base_dir), lora={"targets": ["q_proj"]})
    with pytest.raises(ConfigError, match="FSDP2 needs one dtype"):
        TrainConfig(init_from=str(base_dir), strategy="fsdp", lora={"base_dtype": "bf16"})
    assert TrainConfig.load(None, [f"init_from={base_dir}", "lora.r=16", "lora.targets=[fc_in]"]).lora_settings() == \
        LoraSettings(r=16, targets=("fc_in",))
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3", "target_modules": ["fc_in"]}))
    with pytest.raises(CheckpointError, match="only LORA adapters"):
        load_model(tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "target_modules": ["x"]}))
    with pytest.raises(CheckpointError, match="bad LoRA settings"):
        load_model(tmp_path)
    settings = LoraSettings(r=2, targets=("fc_in",))
    save_adapter(adapted(base_dir, settings), tmp_path / "a", settings, None)
    with pytest.raises(CheckpointError, match="no base_model_name_or_path"):
        load_model(tmp_path / "a")
    _, other = load_model(base_dir)
    apply_lora(other, LoraSettings(r=3, targets=("fc_in",)))
    with pytest.raises(CheckpointError, match="has shape"):
        from opencodegen.checkpoint.lora import load_adapter_weights

        load_adapter_weights(other, tmp_path / "a")


def lora_settings(corpus, base_dir, out, **extra):
    return run_settings(corpus, out, **{"init_from": str(base_dir), "lr": 1e-2, "max_steps": 20, "eval_every": 10,
                                        "save_every": 5, "lora": {"r": 8, "alpha": 16, "dropout": 0.0,
                                                                  "targets": list(ALL)}, **extra})


@pytest.fixture(scope="module")
def lora_run(corpus, base_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "run"
    trainer = Trainer(TrainConfig(**lora_settings(corpus, base_dir, out)))
    before = {n: t.detach().clone() for n, t in trainer.raw_model.state_dict().items()}
    first_val = trainer.evaluate()["loss"]
    summary = trainer.fit()
    return out, trainer, before, first_val, summary


def test_lora_run_trains_only_the_adapters_and_lowers_validation_loss(lora_run, base_dir, tmp_path):
    out, trainer, before, first_val, summary = lora_run
    after = trainer.raw_model.state_dict()
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all(".lora_" in n for n in changed)
    assert {n for n in before if ".lora_B." in n} <= changed  # every B left zero
    print(f"validation loss {first_val:.3f} -> {summary['val']['loss']:.3f}")
    assert summary["val"]["loss"] < first_val - 0.5
    # the run's outputs: adapter-only checkpoints and final/, in peft's layout with the tokenizer
    files = sorted(p.name for p in (out / "checkpoints" / "step-00000020").iterdir())
    assert "adapter_model.safetensors" in files and "model.safetensors" not in files and "trainer.pt" in files
    assert sorted(p.name for p in summary["final"].iterdir()) == sorted(
        ["adapter_config.json", "adapter_model.safetensors", *[f for f in files if f.endswith((".txt", ".json"))
                                                              and f not in ("adapter_config.json", "checkpoint.json")]])
    # convert checkpoint merges a LoRA run into an HF directory; the adapter loads as the same model
    assert main(["convert", "checkpoint", str(out), "--out", str(tmp_path / "hf")]) == 0
    _, merged = load_model(tmp_path / "hf")
    directory, from_adapter = load_model(summary["final"])
    assert directory == summary["final"]
    with torch.no_grad():
        torch.testing.assert_close(merged(IDS).logits, from_adapter(IDS).logits, rtol=0, atol=1e-5)
        trainer.raw_model.eval()
        torch.testing.assert_close(merged(IDS).logits, trainer.raw_model(IDS).logits, rtol=0, atol=1e-4)


def test_lora_resume_is_exact(corpus, base_dir, lora_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(lora_run[0], out)
    for name in ("step-00000015", "step-00000020"):
        shutil.rmtree(out / "checkpoints" / name)
    trainer = Trainer(TrainConfig(**lora_settings(corpus, base_dir, out)), resume="auto")
    assert trainer.step == 10
    trainer.fit()
    assert trajectory(out) == trajectory(lora_run[0])


def test_lora_generate_cli_takes_the_adapter_directory(lora_run, tmp_path, capsys):
    final = lora_run[4]["final"]
    assert main(["convert", "merge-lora", str(final), "--out", str(tmp_path / "merged")]) == 0
    capsys.readouterr()
    outputs = []
    for model in (final, tmp_path / "merged"):
        assert main(["generate", "--model", str(model), "--prompt", "def f(", "--max-new-tokens", "8",
                     "--temperature", "0", "--json"]) == 0
        outputs.append(json.loads(capsys.readouterr().out)["completions"])
    assert outputs[0] == outputs[1]


def test_lora_under_fsdp_with_two_processes_matches_one(corpus, base_dir, tmp_path):
    """FSDP2 shards the frozen base and the adapters alike; the adapter checkpoints are gathered."""
    settings = lora_settings(corpus, base_dir, tmp_path / "one", precision="fp32", max_steps=6, save_every=3,
                             eval_every=3, export_final=False)
    Trainer(TrainConfig(**settings)).fit()
    config = write_config(tmp_path / "run.yaml", {**settings, "out_dir": str(tmp_path / "two"), "strategy": "fsdp"})
    run(torchrun(2, "-m", "opencodegen.cli", "train", "--config", str(config)))
    ours, expected = trajectory(tmp_path / "two"), trajectory(tmp_path / "one")
    assert [r[:2] for r in ours] == [r[:2] for r in expected]
    for (_, _, loss), (_, _, reference) in zip(ours, expected):
        assert loss == pytest.approx(reference, rel=1e-5)
    assert (tmp_path / "two" / "checkpoints" / "step-00000006" / "adapter_model.safetensors").is_file()
