"""End-to-end training on this machine's Python standard library (tiny models, CPU, 1 thread).

Shows: 2-process torchrun (gloo) with DDP and with FSDP2 gives the losses of 1 process with the
same global batch; kill -9 in the middle of a step and `--resume auto` reproduce the
uninterrupted trajectory exactly; damaged checkpoints are detected and skipped; a tiny model
overfits one batch; a small model lowers its validation loss; exports load in opencodegen and
transformers; `init_from` starts a new stage at step 0 with a fresh optimizer.
"""

import json
import shutil
import subprocess
import sys
import types

import pytest
import torch

from opencodegen.checkpoint import load_model
from opencodegen.cli import main
from opencodegen.data.dataset import InMemorySequences
from opencodegen.errors import CheckpointError, ConfigError
from opencodegen.tokenizer import CodeGenTokenizer
from opencodegen.training.checkpointing import find_checkpoint
from opencodegen.training.config import TrainConfig
from opencodegen.training.trainer import Trainer
from training_helpers import (
    TIMEOUT,
    run,
    run_settings,
    torchrun,
    trajectory,
    write_config,
)


@pytest.fixture(scope="module")
def reference_run(corpus, tmp_path_factory):
    """The uninterrupted one-process run."""
    out = tmp_path_factory.mktemp("runs") / "reference"
    Trainer(TrainConfig(**run_settings(corpus, out))).fit()
    return out


def test_torchrun_two_processes_ddp_and_fsdp_match_one(corpus, reference_run, tmp_path):
    """One torchrun launch (2 processes, gloo) runs `opencodegen train` with DDP, then with FSDP2."""
    script = tmp_path / "both.py"
    script.write_text(
        "import sys\n"
        "import torch.distributed as dist\n"
        "from opencodegen.cli import main\n"
        "dist.init_process_group('gloo')\n"
        "for strategy in ('ddp', 'fsdp'):\n"
        "    assert main(['train', '--config', sys.argv[1], f'strategy={strategy}', f'out_dir={sys.argv[2]}/{strategy}']) == 0\n"
        "dist.destroy_process_group()\n"
    )
    config = write_config(tmp_path / "run.yaml", run_settings(corpus, None, save_every=10, export_final=False))
    proc = run(torchrun(2, str(script), str(config), str(tmp_path)))
    ref = trajectory(reference_run)
    assert len([r for r in ref if r[0] == "train"]) == 20
    for strategy in ("ddp", "fsdp"):
        assert f"2 process(es), strategy {strategy}" in proc.stdout
        ours = trajectory(tmp_path / strategy)
        assert [r[:2] for r in ours] == [r[:2] for r in ref]
        for (_, _, loss), (_, _, expected) in zip(ours, ref):
            assert loss == pytest.approx(expected, rel=1e-4), strategy
    # A checkpoint of the 2-process FSDP run resumes in one process without any group.
    resumed = Trainer(TrainConfig(**run_settings(corpus, tmp_path / "fsdp", max_steps=21, export_final=False)),
                      resume="auto")
    assert resumed.step == 20 and resumed.env.strategy == "none"
    # (FSDP checkpoints are sharded: read the stored optimizer state back through torch.distributed.checkpoint)
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(tmp_path / "fsdp" / "checkpoints" / "step-00000020" / "dcp", tmp_path / "whole.pt")
    exp_avg = torch.load(tmp_path / "whole.pt")["optim"]["state"]
    param = resumed.raw_model.transformer.h[1].mlp.fc_in.weight
    assert torch.equal(resumed.optimizer.state[param]["exp_avg"], exp_avg["transformer.h.1.mlp.fc_in.weight"]["exp_avg"])
    resumed.fit()


def test_kill_9_mid_step_then_resume_is_exact(corpus, reference_run, tmp_path):
    out = tmp_path / "killed"
    config = write_config(tmp_path / "run.yaml", run_settings(corpus, out))
    # Steps 1-12 take 2 forwards each and the validation at step 10 takes 4: forward 30 is the
    # second micro-batch of step 13, after its first backward.
    script = tmp_path / "kill.py"
    script.write_text(
        "import os, signal, sys\n"
        "from opencodegen.training.config import TrainConfig\n"
        "from opencodegen.training.trainer import Trainer\n"
        "trainer = Trainer(TrainConfig.load(sys.argv[1]))\n"
        "calls = []\n"
        "def hook(*_):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 30:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "trainer.raw_model.register_forward_hook(hook)\n"
        "trainer.fit()\n"
    )
    proc = subprocess.run([sys.executable, str(script), str(config)], capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert trajectory(out)[-1][:2] == ("train", 12)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000005", "step-00000010"]

    trainer = Trainer(TrainConfig.load(config), resume="auto")
    assert trainer.step == 10
    trainer.fit()
    assert trajectory(out) == trajectory(reference_run)  # bit for bit, validation included


def test_damaged_checkpoints_are_detected_and_auto_falls_back(corpus, reference_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == [f"step-{s:08d}" for s in (5, 10, 15, 20)]
    data = bytearray((ckpts / "step-00000020" / "trainer.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit-group: same size, wrong checksum
    (ckpts / "step-00000020" / "trainer.pt").write_bytes(bytes(data))
    weights = ckpts / "step-00000015" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    half = ckpts / ".tmp-step-00000025-123"
    half.mkdir()
    (half / "trainer.pt").write_bytes(b"partial")

    with pytest.raises(CheckpointError, match="trainer.pt: corrupt: sha256 does not match"):
        find_checkpoint(str(ckpts / "step-00000020"), out)
    with pytest.raises(CheckpointError, match="model.safetensors: corrupt or half-written: 1000 bytes"):
        find_checkpoint(str(ckpts / "step-00000015"), out)
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        Trainer(TrainConfig(**run_settings(corpus, out)))

    trainer = Trainer(TrainConfig(**run_settings(corpus, out)), resume="auto")
    said = capsys.readouterr().out
    assert "ignoring .tmp-step-00000025-123: an unfinished (half-written) checkpoint" in said
    assert "skipping checkpoint step-00000020" in said and "skipping checkpoint step-00000015" in said
    assert "falling back to checkpoint step-00000010" in said and trainer.step == 10
    trainer.fit()  # rewrites steps 15 and 20
    assert trajectory(out) == trajectory(reference_run)

    for path in ckpts.iterdir():
        (path / "checkpoint.json").unlink()
    with pytest.raises(CheckpointError, match="no usable checkpoint; all 4 are damaged"):
        find_checkpoint("auto", out, say=lambda _: None)


def test_export_loads_in_opencodegen_and_transformers(reference_run, tmp_path):
    from transformers import CodeGenForCausalLM as HFCodeGen

    assert main(["convert", "checkpoint", str(reference_run), "--out", str(tmp_path / "hf")]) == 0
    _, ours = load_model(tmp_path / "hf")
    _, trained = load_model(reference_run / "checkpoints" / "step-00000020")
    tokenizer = CodeGenTokenizer.from_pretrained(tmp_path / "hf")
    ids = torch.tensor([tokenizer.encode("def main():\n    return os.path.join(a, b)\n")])
    reference = HFCodeGen.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        logits = ours(ids).logits
        torch.testing.assert_close(logits, trained(ids).logits, rtol=0, atol=0)
        torch.testing.assert_close(logits, reference(ids).logits, rtol=1e-4, atol=1e-4)
    final = reference_run / "final"  # the run's own export at the end
    assert sorted(p.name for p in final.iterdir()) == sorted(p.name for p in (tmp_path / "hf").iterdir())


def test_init_from_starts_a_new_stage(corpus, reference_run, tmp_path):
    settings = run_settings(corpus, tmp_path / "stage2", init_from=str(reference_run / "final"), max_steps=3,
                            eval_every=0, save_every=0, export_final=False)
    trainer = Trainer(TrainConfig(**settings))
    _, previous = load_model(reference_run / "final")
    assert trainer.step == 0 and not trainer.optimizer.state
    for name, tensor in previous.state_dict().items():
        assert torch.equal(trainer.raw_model.state_dict()[name], tensor), name
    summary = trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "stage2" / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["lr"] == pytest.approx(3e-3 / 5)  # the warm-up starts again
    assert summary["step"] == 3 and [r[1] for r in trajectory(tmp_path / "stage2") if r[0] == "train"] == [1, 2, 3]
    assert (tmp_path / "stage2" / "checkpoints" / "step-00000003" / "tokenizer.json").is_file()



def test_a_preset_model_takes_the_eos_of_its_tokenizer(corpus, reference_run):
    tokenizer = CodeGenTokenizer.from_pretrained(corpus / "tok")
    config = load_model(reference_run / "final")[1].config
    assert config.eos_token_id == config.bos_token_id == tokenizer.eos_token_id < config.vocab_size


def test_tiny_model_overfits_one_batch(tmp_path):
    rows = torch.randint(0, 1024, (4, 33), generator=torch.Generator().manual_seed(0))
    config = TrainConfig(model="tiny", batch_size=4, micro_batch_size=4, lr=1e-2, warmup_steps=10, max_steps=50,
                         weight_decay=0.0, eval_every=0, log_every=10, save_every=0, export_final=False,
                         tensorboard=False, threads=1, out_dir=str(tmp_path / "overfit"))
    trainer = Trainer(config, train_dataset=InMemorySequences(rows))
    trainer.fit()
    losses = [r[2] for r in trajectory(tmp_path / "overfit")]
    assert losses[0] > 4.0 and losses[-1] < 0.05
    assert (tmp_path / "overfit" / "loss.png").stat().st_size > 1000


def test_sequences_longer_than_the_context_are_refused_before_training(tmp_path):
    config = TrainConfig(model="tiny", batch_size=2, micro_batch_size=2, max_steps=1, eval_every=0, save_every=0,
                         export_final=False, tensorboard=False, threads=1, out_dir=str(tmp_path / "long"))
    rows = torch.zeros((2, 514), dtype=torch.long)  # 513 tokens per sequence; the tiny preset's context is 512
    with pytest.raises(ConfigError, match=r"513-token sequences but the model's context is n_positions=512: "
                                          r"rebuild it with `opencodegen data build --seq-len 512`"):
        Trainer(config, train_dataset=InMemorySequences(rows))
    assert not (tmp_path / "long" / "metrics.jsonl").exists()


def test_small_model_lowers_validation_loss_on_the_stdlib(corpus, tmp_path):
    settings = run_settings(corpus, tmp_path / "small", model="small", model_overrides={"vocab_size": 640},
                            batch_size=8, micro_batch_size=8, lr=3e-3, warmup_steps=5, max_steps=30,
                            eval_every=0, eval_batches=4, log_every=10, save_every=0, export_final=False)
    trainer = Trainer(TrainConfig(**settings))
    before = trainer.evaluate()["loss"]
    after = trainer.fit()["val"]["loss"]
    assert before > 6.0  # ~ln(640) for the untrained model
    print(f"validation loss {before:.3f} -> {after:.3f}")
    assert after < before - 1.5, (before, after)


def test_time_budget_ends_the_run_and_carries_over_a_resume(corpus, tmp_path, monkeypatch):
    clock = iter(range(0, 10_000, 10))  # every reading of the trainer's clock: 10 s later
    monkeypatch.setattr("opencodegen.training.trainer.time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    settings = run_settings(corpus, tmp_path / "timed", max_steps=1000, max_time=300, log_every=2, eval_every=0,
                            save_every=2, export_final=False)
    summary = Trainer(TrainConfig(**settings)).fit()
    records = [json.loads(line) for line in (tmp_path / "timed" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert 2 <= summary["step"] < 100 and train[-1]["step"] == summary["step"]
    assert train[-1]["lr"] < train[0]["lr"] < 3e-3  # the cosine ran down with the time
    first = summary["step"]
    # resuming with a larger budget continues from the time already spent
    summary = Trainer(TrainConfig(**{**settings, "max_time": 600}), resume="auto").fit()
    assert first < summary["step"] < 200


def test_activation_checkpointing_and_one_process_fsdp_keep_the_losses(corpus, reference_run, tmp_path):
    settings = run_settings(corpus, tmp_path / "gc", max_steps=4, gradient_checkpointing=True, strategy="fsdp",
                            eval_every=0, save_every=0, export_final=False)
    trainer = Trainer(TrainConfig(**settings))
    assert trainer.env.strategy == "fsdp" and trainer.raw_model.gradient_checkpointing
    trainer.fit()
    ours = [r for r in trajectory(tmp_path / "gc") if r[0] == "train"]
    expected = [r for r in trajectory(reference_run) if r[0] == "train"][:4]
    assert [r[1] for r in ours] == [1, 2, 3, 4]
    for (_, _, loss), (_, _, ref) in zip(ours, expected):
        assert loss == pytest.approx(ref, rel=1e-5)
