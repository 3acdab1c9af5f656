"""Sharded checkpoints (torch.distributed.checkpoint, `strategy: fsdp`): every rank writes its
shards; a checkpoint resumes on another number of processes (resharding) with the losses of the
uninterrupted run; a torn shard is detected and skipped; `convert checkpoint` exports it."""

import shutil

import pytest
import torch

from opencodegen.checkpoint import load_model
from opencodegen.cli import main
from opencodegen.errors import CheckpointError
from opencodegen.training.checkpointing import find_checkpoint, is_sharded
from opencodegen.training.config import TrainConfig
from opencodegen.training.trainer import Trainer
from training_helpers import (
    run,
    run_settings,
    torchrun,
    trajectory,
    write_config,
)

REL = 1e-6


def settings(corpus, out, **extra) -> dict:
    """8 fp32 steps with sharded checkpoints and validation at steps 4 and 8."""
    return run_settings(corpus, out, **{"max_steps": 8, "save_every": 4, "eval_every": 4, "precision": "fp32",
                                        "export_final": False, "strategy": "fsdp", **extra})


def launch_two(config, *args: str) -> None:
    run(torchrun(2, "-m", "opencodegen.cli", "train", "--config", str(config), *args))


def assert_same_losses(ours, expected) -> None:
    assert [r[:2] for r in ours] == [r[:2] for r in expected]
    for (split, step, loss), (_, _, reference) in zip(ours, expected):
        assert loss == pytest.approx(reference, rel=REL), (split, step)


def interrupted_copy(run_dir, target):
    """The run as if killed after its step-4 checkpoint."""
    shutil.copytree(run_dir, target)
    shutil.rmtree(target / "checkpoints" / "step-00000008")
    return target


@pytest.fixture(scope="module")
def two_process_run(corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("sharded")
    config = write_config(root / "run.yaml", settings(corpus, root / "two"))
    launch_two(config)
    return root / "two", config


def test_two_process_shards_resume_with_two_and_with_one(corpus, two_process_run, tmp_path):
    out, config = two_process_run
    step4 = out / "checkpoints" / "step-00000004"
    assert is_sharded(step4) and sorted(p.name for p in (step4 / "dcp").iterdir()) == [
        ".metadata", "__0_0.distcp", "__1_0.distcp"]  # one file per rank
    assert "model.safetensors" not in {p.name for p in step4.iterdir()}
    reference = trajectory(out)

    again = interrupted_copy(out, tmp_path / "two-again")
    launch_two(config, f"out_dir={again}", "--resume", "auto")
    assert_same_losses(trajectory(again), reference)

    alone = interrupted_copy(out, tmp_path / "one")
    trainer = Trainer(TrainConfig(**settings(corpus, alone, strategy="none")), resume="auto")
    assert trainer.step == 4 and trainer.env.world_size == 1 and trainer.env.strategy == "none"
    # the export of the sharded checkpoint holds exactly the weights the resumed run starts from
    assert main(["convert", "checkpoint", str(step4), "--out", str(tmp_path / "hf")]) == 0
    _, exported = load_model(tmp_path / "hf")
    for name, tensor in exported.state_dict().items():
        assert torch.equal(tensor, trainer.raw_model.state_dict()[name]), name
    trainer.fit()
    assert_same_losses(trajectory(alone), reference)


def test_one_process_shards_resume_with_two(corpus, tmp_path):
    out = tmp_path / "one"
    Trainer(TrainConfig(**settings(corpus, out))).fit()  # FSDP2 in a group of one
    assert is_sharded(out / "checkpoints" / "step-00000008")
    config = write_config(tmp_path / "run.yaml", settings(corpus, interrupted_copy(out, tmp_path / "two")))
    launch_two(config, "--resume", "auto")
    assert_same_losses(trajectory(tmp_path / "two"), trajectory(out))


def test_torn_shard_is_detected_and_skipped(corpus, two_process_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(two_process_run[0], out)
    shard = out / "checkpoints" / "step-00000008" / "dcp" / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"dcp/__1_0.distcp: corrupt: sha256 does not match"):
        find_checkpoint(str(shard.parent.parent), out)
    trainer = Trainer(TrainConfig(**settings(corpus, out, strategy="none")), resume="auto")
    said = capsys.readouterr().out
    assert "skipping checkpoint step-00000008" in said and "falling back to checkpoint step-00000004" in said
    assert trainer.step == 4
    trainer.fit()
    assert_same_losses(trajectory(out), trajectory(two_process_run[0]))

    (out / "checkpoints" / "step-00000004" / "dcp" / "__0_0.distcp").unlink()
    with pytest.raises(CheckpointError, match="dcp/__0_0.distcp listed in checkpoint.json is missing"):
        find_checkpoint(str(out / "checkpoints" / "step-00000004"), out)
    with pytest.raises(CheckpointError, match="a sharded training checkpoint; make an HF directory of it"):
        load_model(out / "checkpoints" / "step-00000004")
