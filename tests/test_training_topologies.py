"""Paths that are wired for big machines, run small: FSDP2 CPU offload, and two "nodes" on this
machine through torchrun's c10d rendezvous; each gives the losses of the one-process run."""

import subprocess
import sys

import pytest

from opencodegen.training.config import TrainConfig
from opencodegen.training.trainer import Trainer
from training_helpers import (
    TIMEOUT,
    free_port,
    run_settings,
    trajectory,
    write_config,
)

REL = 1e-5  # fp32: only the order of the reductions differs


def settings(corpus, out, **extra) -> dict:
    return run_settings(corpus, out, **{"max_steps": 8, "save_every": 4, "eval_every": 4, "precision": "fp32",
                                        "export_final": False, **extra})


@pytest.fixture(scope="module")
def one_process(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "run"
    Trainer(TrainConfig(**settings(corpus, out, strategy="none"))).fit()
    return trajectory(out)


def assert_same_losses(ours, expected) -> None:
    assert [r[:2] for r in ours] == [r[:2] for r in expected]
    for (split, step, loss), (_, _, reference) in zip(ours, expected):
        assert loss == pytest.approx(reference, rel=REL), (split, step)


def test_fsdp2_cpu_offload_keeps_the_losses(corpus, one_process, tmp_path):
    trainer = Trainer(TrainConfig(**settings(corpus, tmp_path / "offload", strategy="fsdp", fsdp_cpu_offload=True)))
    block = trainer.raw_model.transformer.h[0]
    assert type(block._get_fsdp_state()._fsdp_param_group.offload_policy).__name__ == "CPUOffloadPolicy"
    trainer.fit()
    assert_same_losses(trajectory(tmp_path / "offload"), one_process)


def test_two_nodes_through_the_c10d_rendezvous(corpus, one_process, tmp_path):
    """Two torchrun agents (`--nnodes 2`, one process each) meet at a c10d endpoint on 127.0.0.1
    and train one FSDP2 run with CPU offload, as two machines would."""
    config = write_config(tmp_path / "run.yaml", settings(corpus, tmp_path / "run", strategy="fsdp",
                                                          fsdp_cpu_offload=True))
    endpoint = f"127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
               "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint, "--rdzv_id", "two-nodes",
               "-m", "opencodegen.cli", "train", "--config", str(config)]
    nodes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        outputs = [node.communicate(timeout=TIMEOUT) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    for node, (stdout, stderr) in zip(nodes, outputs):
        assert node.returncode == 0, stdout[-2000:] + stderr[-3000:]
    assert any("2 process(es), strategy fsdp" in stdout for stdout, _ in outputs)
    assert_same_losses(trajectory(tmp_path / "run"), one_process)
