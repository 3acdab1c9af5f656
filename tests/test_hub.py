"""Hub ids resolve offline first: a model in the HF cache loads with no network attempt, a missing
one fails at once naming the cache and HF_HUB_OFFLINE, and `info` fetches config.json alone."""

from __future__ import annotations

import json
import socket
import traceback
from collections import Counter
from pathlib import Path

import huggingface_hub
import huggingface_hub.constants
import huggingface_hub.utils
import pytest
import torch

from opencodegen import default_model
from opencodegen.checkpoint import load_model
from opencodegen.cli import main
from opencodegen.config import CodeGenConfig
from opencodegen.errors import CheckpointError
from opencodegen.hub import hub_cache_dir
from opencodegen.model import CodeGenForCausalLM
from opencodegen.training.checkpointing import copy_tokenizer_files

REPO = "tiny-org/codegen-tiny"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


_NETWORK_LAYERS = ("socket.py", "httpx", "httpcore", "urllib3", "requests", "ssl.py")


def _caller() -> str:
    """Which code asked for the network: the innermost frame above the HTTP layers, and the
    innermost frame of opencodegen."""
    frames = [f for f in reversed(traceback.extract_stack()[:-2]) if not any(x in f.filename for x in _NETWORK_LAYERS)]
    ours = next((f for f in frames if "opencodegen" in f.filename), None)
    where = [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in (frames[0], ours) if f is not None]
    return " via ".join(where)


@pytest.fixture
def network_attempts(monkeypatch):
    """Every name lookup or socket connect, recorded (with the code that asked) and refused:
    the network is unreachable."""
    attempts: list[str] = []

    def refuse_lookup(host, *args, **kwargs):
        attempts.append(f"getaddrinfo {host} from {_caller()}")
        raise socket.gaierror(socket.EAI_NONAME, "network unreachable (test)")

    def refuse_connect(self, address):
        attempts.append(f"connect {address} from {_caller()}")
        raise OSError("network unreachable (test)")

    monkeypatch.setattr(socket, "getaddrinfo", refuse_lookup)
    monkeypatch.setattr(socket.socket, "connect", refuse_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse_connect)
    return attempts


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    """An empty HF_HOME, online mode unless a test sets HF_HUB_OFFLINE."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    return tmp_path / "hf-home"


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return CodeGenForCausalLM(CodeGenConfig.from_preset("tiny")).eval()


def cache_snapshot(hf_home, model=None):
    """Lay out REPO in huggingface_hub's cache format: models--org--name/{refs/main, snapshots/<commit>/}."""
    repo_dir = hf_home / "hub" / ("models--" + REPO.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(COMMIT)
    if model is not None:
        model.save_pretrained(snapshot)
        copy_tokenizer_files(default_model.DIRECTORY, snapshot)
    return snapshot


@pytest.mark.parametrize("offline", ["0", "1"])
def test_cached_model_loads_without_any_network_attempt(hf_home, network_attempts, tiny_model, monkeypatch, offline):
    monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    snapshot = cache_snapshot(hf_home, tiny_model)
    directory, loaded = load_model(REPO)
    assert directory.resolve() == snapshot.resolve()
    ids = torch.tensor([[1, 5, 9, 2]])
    torch.testing.assert_close(loaded(ids).logits, tiny_model(ids).logits, rtol=0, atol=0)
    assert network_attempts == []


def test_files_of_the_repository_never_downloaded_do_not_hide_the_cached_model(hf_home, network_attempts, tiny_model,
                                                                                monkeypatch):
    """huggingface_hub records the repository's file list; a model downloaded without some of
    those files (the .bin weights beside the safetensors) still resolves from the cache."""
    tree_cache = pytest.importorskip("huggingface_hub._tree_cache")
    snapshot = cache_snapshot(hf_home, tiny_model)
    listing = {name: tree_cache.TreeCacheEntry(size=1, blob_id="0" * 40)
               for name in ["config.json", "model.safetensors", "pytorch_model.bin", "README.md"]}
    tree_cache.write_tree_cache(str(snapshot.parent.parent), COMMIT, listing)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    directory, _ = load_model(REPO)
    assert directory == snapshot and network_attempts == []


def test_uncached_offline_error_names_the_cache_and_the_variable(hf_home, network_attempts, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError) as caught:
        load_model(REPO)
    message = str(caught.value)
    assert str(hf_home / "hub") in message and "HF_HUB_OFFLINE" in message and f"hf download {REPO}" in message
    assert network_attempts == []


def test_uncached_unreachable_hub_fails_after_one_attempt(hf_home, network_attempts):
    with pytest.raises(CheckpointError) as caught:
        load_model(REPO)
    message = str(caught.value)
    assert str(hf_home / "hub") in message and "HF_HUB_OFFLINE=1" in message and "could not be reached" in message
    # no retries: no code asks twice (huggingface_hub may make one request of its own, for its user agent)
    assert network_attempts and max(Counter(network_attempts).values()) == 1, network_attempts
    assert all("via hub.py" in attempt for attempt in network_attempts), network_attempts


def test_a_partial_snapshot_is_not_taken_for_a_model(hf_home, network_attempts, monkeypatch):
    snapshot = cache_snapshot(hf_home)
    (snapshot / "config.json").write_text(json.dumps(CodeGenConfig.from_preset("tiny").to_dict()))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="not every file"):
        load_model(REPO)
    assert network_attempts == []


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub_cache_dir() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hub_cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    assert hub_cache_dir() == tmp_path / "hub-cache"


def info_json(capsys, model: str) -> dict:
    capsys.readouterr()
    assert main(["info", model, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_info_on_an_uncached_hub_id_downloads_config_json_only(hf_home, network_attempts, monkeypatch, capsys, tmp_path):
    config = CodeGenConfig.from_preset("tiny")
    requested = []

    def fake_download(repo_id, filename, **kwargs):
        requested.append((repo_id, filename))
        path = tmp_path / "downloaded" / filename
        path.parent.mkdir(exist_ok=True)
        config.save(path.parent, dtype="bfloat16")
        return str(path)

    def no_snapshot_download(repo_id, **kwargs):
        if not kwargs.get("local_files_only"):
            requested.append((repo_id, f"snapshot {kwargs.get('allow_patterns')}"))
        raise huggingface_hub.utils.LocalEntryNotFoundError("not cached (test)")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_snapshot_download)
    info = info_json(capsys, REPO)
    assert requested == [(REPO, "config.json")]
    assert info["config_only"] and info["weights"] is None and info["dtype"] == "bfloat16"
    assert info["parameters"] == config.num_parameters() and info["config"]["n_layer"] == config.n_layer
    assert network_attempts == []
    assert main(["info", REPO]) == 0
    assert "not downloaded" in capsys.readouterr().out


def test_info_on_a_cached_hub_id_describes_it_whole_offline(hf_home, network_attempts, tiny_model, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache_snapshot(hf_home, tiny_model)
    info = info_json(capsys, REPO)
    assert not info["config_only"] and info["weights"] == ["model.safetensors"] and info["tokenizer_size"] > 0
    assert network_attempts == []


def test_info_offline_without_a_cached_config_names_the_cache(hf_home, network_attempts, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["info", REPO]) == 2
    err = capsys.readouterr().err
    assert str(hf_home / "hub") in err and "HF_HUB_OFFLINE" in err
    assert network_attempts == []
