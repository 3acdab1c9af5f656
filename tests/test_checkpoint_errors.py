"""Every loader error is one clear CheckpointError naming the file and the key."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from opencodegen.checkpoint import load_model, save_model
from opencodegen.checkpoint.hf import released_state_dict
from opencodegen.config import CodeGenConfig
from opencodegen.errors import CheckpointError, ConfigError
from opencodegen.model import CodeGenForCausalLM


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("good")
    torch.manual_seed(0)
    CodeGenForCausalLM(CodeGenConfig.from_preset("tiny")).save_pretrained(path)
    return path


@pytest.fixture
def ckpt(good_dir, tmp_path):
    path = tmp_path / "ckpt"
    shutil.copytree(good_dir, path)
    return path


def rewrite_weights(path, edit):
    state = load_file(path / "model.safetensors")
    edit(state)
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})


def test_loads_and_round_trips(good_dir, tmp_path):
    _, model = load_model(good_dir)
    ids = torch.randint(0, 1024, (2, 9))
    save_model(model, tmp_path, dtype="bfloat16")
    _, bf16 = load_model(tmp_path)
    assert bf16.dtype == torch.bfloat16
    _, back = load_model(tmp_path, dtype="float32")
    assert (back(ids).logits - model(ids).logits).abs().max() < 0.05


def test_sharded_and_bin_checkpoints(good_dir, tmp_path):
    _, model = load_model(good_dir)
    save_model(model, tmp_path / "sharded", max_shard_bytes=200_000)
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    _, sharded = load_model(tmp_path / "sharded")
    (tmp_path / "bin").mkdir()
    shutil.copy(good_dir / "config.json", tmp_path / "bin")
    torch.save(released_state_dict(model, torch.float16), tmp_path / "bin" / "pytorch_model.bin")
    _, from_bin = load_model(tmp_path / "bin")
    assert from_bin.dtype == torch.float32  # fp16 on CPU is upcast
    ids = torch.randint(0, 1024, (1, 7))
    assert torch.equal(sharded(ids).logits, model(ids).logits)
    assert (from_bin(ids).logits - model(ids).logits).abs().max() < 1e-2


def test_missing_directory_and_config(tmp_path, ckpt):
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        load_model(tmp_path / "nope")
    (ckpt / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json"):
        load_model(ckpt)


def test_not_a_codegen_config(ckpt):
    data = json.loads((ckpt / "config.json").read_text())
    data["model_type"] = "llama"
    (ckpt / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="not a CodeGen config.*llama"):
        load_model(ckpt)


def test_malformed_config(ckpt):
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
        load_model(ckpt)


def test_no_weights(ckpt):
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights found"):
        load_model(ckpt)


@pytest.mark.parametrize("quantize", [None, "int8"])
@pytest.mark.parametrize("key", ["transformer.h.1.mlp.fc_in.bias", "transformer.h.1.mlp.fc_in.weight", "lm_head.weight"])
def test_missing_key(ckpt, key, quantize):
    rewrite_weights(ckpt, lambda s: s.pop(key))
    with pytest.raises(CheckpointError, match=rf"missing.*{key.replace('.', '[.]')}"):
        load_model(ckpt, quantize=quantize)  # a layer quantized while loading is complete or refused


def test_unexpected_key(ckpt):
    rewrite_weights(ckpt, lambda s: s.__setitem__("transformer.h.0.attn.rogue", torch.zeros(3)))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: unexpected key 'transformer\.h\.0\.attn\.rogue'"):
        load_model(ckpt)


def test_wrong_shape(ckpt):
    rewrite_weights(ckpt, lambda s: s.__setitem__("lm_head.bias", torch.zeros(7)))
    with pytest.raises(CheckpointError, match=r"'lm_head\.bias' has shape \[7\].*\[1024\]"):
        load_model(ckpt)


def test_wrong_dtype(ckpt):
    rewrite_weights(ckpt, lambda s: s.__setitem__("lm_head.bias", torch.zeros(1024, dtype=torch.int64)))
    with pytest.raises(CheckpointError, match=r"'lm_head\.bias' has dtype torch\.int64"):
        load_model(ckpt)


def test_truncated_file(ckpt):
    path = ckpt / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: truncated file"):
        load_model(ckpt)


def test_garbage_file(ckpt):
    (ckpt / "model.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")
    with pytest.raises(CheckpointError, match="corrupt safetensors header"):
        load_model(ckpt)
    (ckpt / "model.safetensors").write_bytes(b"abc")
    with pytest.raises(CheckpointError, match="truncated safetensors file"):
        load_model(ckpt)


def test_corrupt_bin(ckpt):
    (ckpt / "model.safetensors").unlink()
    (ckpt / "pytorch_model.bin").write_bytes(b"not a pickle at all")
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin: cannot read PyTorch weights"):
        load_model(ckpt)


def test_shard_index_names_missing_file(ckpt):
    (ckpt / "model.safetensors").rename(ckpt / "model-00001-of-00002.safetensors")
    index = {"weight_map": {"lm_head.bias": "model-00002-of-00002.safetensors"}}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="shard files missing: model-00002-of-00002"):
        load_model(ckpt)


def test_hub_id_offline_is_clear(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE is set"):
        load_model("Salesforce/codegen-350M-mono-not-cached")


def test_config_validation():
    with pytest.raises(ConfigError, match="divisible"):
        CodeGenConfig(n_embd=100, n_head=3)
    with pytest.raises(ConfigError, match="rotary_dim"):
        CodeGenConfig(n_embd=64, n_head=4, rotary_dim=32)
    with pytest.raises(ConfigError, match="unknown preset"):
        CodeGenConfig.from_preset("codegen-7B")
    with pytest.warns(UserWarning, match="eos_token_id=2"):
        assert CodeGenConfig.from_dict({"eos_token_id": 2}).eos_token_id == 50256
    extra = CodeGenConfig.from_dict({"n_layer": 2, "transformers_version": "4.21", "custom": [1]})
    assert extra.to_dict()["custom"] == [1] and extra.n_layer == 2


def test_presets_have_the_published_sizes():
    expected = {"350M": 356.7e6, "2B": 2.779e9, "6B": 7.064e9, "16B": 16.03e9}
    for size, params in expected.items():
        got = CodeGenConfig.from_preset(f"codegen-{size}-mono").num_parameters()
        assert abs(got - params) / params < 0.002, (size, got)
    tiny = CodeGenConfig.from_preset("tiny")
    with torch.device("meta"):
        assert CodeGenForCausalLM(tiny).num_parameters() == tiny.num_parameters()


def test_unusable_device_is_a_clear_error(good_dir):
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="device 'cuda' requested"):
            load_model(good_dir, device="cuda")
    with pytest.raises(ConfigError, match="invalid device 'gpu0'"):
        load_model(good_dir, device="gpu0")
