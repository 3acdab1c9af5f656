"""Distributed runs end cleanly on every path: success (every rank exits 0, together), SIGTERM
(every rank unwinds through its cleanup and the job exits non-zero), a failing rank (the job
stops instead of waiting for the collective timeout). Tiny model, CPU, gloo."""

import os
import signal
import subprocess
import time

import pytest

from opencodegen.cli import main
from opencodegen.training.signals import EXIT_STATUS, Terminated, terminate_as_exception
from opencodegen.training.trainer import Trainer
from training_helpers import (
    TIMEOUT,
    run,
    run_settings,
    torchrun,
    trajectory,
    write_config,
)

ABORTED = ("terminate called", "SIGABRT", "Signal 6")


def train_command(config, *overrides: str) -> list[str]:
    return torchrun(2, "-m", "opencodegen.cli", "train", "--config", str(config), *overrides)


def test_consecutive_two_process_runs_all_exit_0(corpus, tmp_path):
    """The issue-21 loop, shortened (scripts/torchrun_exit_loop.py runs 20): rank 0 exports and
    plots after the last checkpoint while rank 1 has nothing left to do, so it must wait for it."""
    config = write_config(tmp_path / "run.yaml", run_settings(corpus, None, max_steps=4, save_every=2, eval_every=2,
                                                              keep_last=2))
    for i, strategy in enumerate(("ddp", "fsdp", "ddp", "fsdp")):
        out = tmp_path / f"run-{i}"
        proc = run(train_command(config, f"strategy={strategy}", f"out_dir={out}"))
        assert not any(sign in proc.stderr for sign in ABORTED), proc.stderr[-3000:]
        assert f"strategy {strategy}" in proc.stdout and (out / "final" / "model.safetensors").is_file()
        assert [r[1] for r in trajectory(out) if r[0] == "train"] == [1, 2, 3, 4]


def wait_for_step(out_dir, step: int, proc: subprocess.Popen) -> None:
    """Wait until the run logged training step `step` (fails if the run ends first)."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        path = out_dir / "metrics.jsonl"
        if path.exists() and any(r[0] == "train" and r[1] >= step for r in trajectory(out_dir)):
            return
        time.sleep(0.2)
    pytest.fail(f"the run never logged step {step} (exit status {proc.poll()})")


def test_sigterm_to_torchrun_unwinds_every_rank(corpus, tmp_path):
    out = tmp_path / "run"
    config = write_config(tmp_path / "run.yaml", run_settings(corpus, out, max_steps=100_000, save_every=2,
                                                              eval_every=0, warmup_steps=1))
    proc = subprocess.Popen(train_command(config, "strategy=fsdp"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_for_step(out, 3, proc)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert "stopped by signal SIGTERM; the run did not finish" in stderr, stderr[-3000:]
    assert not any(sign in stderr for sign in ABORTED), stderr[-3000:]
    assert (out / "checkpoints" / "step-00000002" / "checkpoint.json").is_file()


def test_a_failing_rank_stops_the_job_at_once(corpus, tmp_path):
    """Rank 1 fails in step 3 while rank 0 waits in a collective: both end, torchrun reports it."""
    script = tmp_path / "fail.py"
    script.write_text(
        "import os, sys\n"
        "from opencodegen.cli import main\n"
        "from opencodegen.training.trainer import Trainer\n"
        "step = Trainer.train_step\n"
        "def failing(self, batch):\n"
        "    if self.env.rank == 1 and self.step == 2:\n"
        "        raise RuntimeError('rank 1 fails on purpose')\n"
        "    return step(self, batch)\n"
        "Trainer.train_step = failing\n"
        "sys.exit(main(['train', '--config', sys.argv[1], 'strategy=ddp']))\n"
    )
    config = write_config(tmp_path / "run.yaml", run_settings(corpus, tmp_path / "run", max_steps=50))
    proc = subprocess.run(torchrun(2, str(script), str(config)), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode != 0
    assert "rank 1 fails on purpose" in proc.stderr, proc.stderr[-3000:]
    assert not any(sign in proc.stderr for sign in ABORTED), proc.stderr[-3000:]


def test_sigterm_in_one_process_keeps_the_last_checkpoint_and_resumes(corpus, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    config = write_config(tmp_path / "run.yaml", run_settings(corpus, out, max_steps=8, save_every=2, eval_every=0))
    step = Trainer.train_step

    def terminated_in_step_4(self, batch):
        if self.step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return step(self, batch)

    monkeypatch.setattr(Trainer, "train_step", terminated_in_step_4)
    assert main(["train", "--config", str(config)]) == EXIT_STATUS
    assert "stopped by signal SIGTERM" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler went with the run
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002"]
    monkeypatch.setattr(Trainer, "train_step", step)
    assert main(["train", "--config", str(config), "--resume", "auto"]) == 0
    assert [r[1] for r in trajectory(out) if r[0] == "train"] == list(range(1, 9))


def test_sigterm_inside_a_sharded_save_is_a_stop_not_a_crash(corpus, tmp_path, capsys, monkeypatch):
    """torch.distributed.checkpoint wraps what its writer raised: a SIGTERM that lands while shards are
    written must still end the run as a stop (its message, its exit status), not as a failure."""
    import torch.distributed.checkpoint.filesystem as dcp_files

    out = tmp_path / "run"
    settings = run_settings(corpus, out, max_steps=8, save_every=2, eval_every=0, checkpoint_format="sharded")
    config = write_config(tmp_path / "run.yaml", settings)
    write_item = dcp_files._write_item

    def terminated_while_writing(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # the handler raises inside the writer, as a real SIGTERM would
        return write_item(*args, **kwargs)

    monkeypatch.setattr(dcp_files, "_write_item", terminated_while_writing)
    assert main(["train", "--config", str(config)]) == EXIT_STATUS
    assert "stopped by signal SIGTERM; the run did not finish" in capsys.readouterr().err


def test_terminate_as_exception_restores_the_handler():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated, match="SIGTERM"):
        with terminate_as_exception():
            os.kill(os.getpid(), signal.SIGTERM)  # os.kill runs the Python handler before it returns
            pytest.fail("SIGTERM did not raise")
    assert signal.getsignal(signal.SIGTERM) is before
