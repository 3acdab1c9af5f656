"""JAXFORMER import: a synthetic checkpoint in JAXFORMER's layout gives the original model's logits.

The test writes the checkpoint the way JAXFORMER does: a nested haiku parameter dict, flattened
like `jax.tree_flatten` (dict keys in sorted order), saved with `np.savez(f, *leaves)`, matrices
[in, out], per-layer arrays stacked on a leading axis, fused qkv in mp_num shards of (Q, V, K),
embedding as a biased Linear, bf16 as raw 2-byte voids.
"""

import json

import numpy as np
import pytest
import torch

from opencodegen.checkpoint import load_model
from opencodegen.checkpoint.hf import qkv_to_released
from opencodegen.checkpoint.jaxformer import import_jaxformer
from opencodegen.cli import main
from opencodegen.config import CodeGenConfig
from opencodegen.errors import CheckpointError
from opencodegen.model import CodeGenForCausalLM


def haiku_tree(model: CodeGenForCausalLM, mp_num: int, embed_bias: torch.Tensor) -> dict:
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    n = model.config.n_layer

    def stacked(name: str, matrix: bool) -> torch.Tensor:
        layers = [sd[f"transformer.h.{i}.{name}"] for i in range(n)]
        if name == "attn.qkv.weight":
            layers = [qkv_to_released(w, mp_num) for w in layers]
        return torch.stack([w.T if matrix else w for w in layers])

    return {
        "embed": {"embedding_sharded/~/proj": {"w": sd["transformer.wte.weight"] - embed_bias, "b": embed_bias}},
        "transformer": {
            "block/~/ln": {"scale": stacked("ln_1.weight", False), "offset": stacked("ln_1.bias", False)},
            "block/~/attn/~/proj_qkv": {"w": stacked("attn.qkv.weight", True)},
            "block/~/attn/~/proj_out": {"w": stacked("attn.out_proj.weight", True)},
            "block/~/ff/~/proj_in": {"w": stacked("mlp.fc_in.weight", True), "b": stacked("mlp.fc_in.bias", False)},
            "block/~/ff/~/proj_out": {"w": stacked("mlp.fc_out.weight", True), "b": stacked("mlp.fc_out.bias", False)},
        },
        "proj": {
            "projection/~/layer_norm": {"scale": sd["transformer.ln_f.weight"], "offset": sd["transformer.ln_f.bias"]},
            "projection/~/linear": {"w": sd["lm_head.weight"].T, "b": sd["lm_head.bias"]},
        },
    }


def tree_leaves(tree) -> list[torch.Tensor]:
    """jax.tree_flatten order: dict keys sorted, depth first."""
    if isinstance(tree, dict):
        return [leaf for key in sorted(tree) for leaf in tree_leaves(tree[key])]
    return [tree]


def write_jaxformer(root, step: int, model, mp_num: int, bf16: bool, embed_bias) -> None:
    leaves = tree_leaves(haiku_tree(model, mp_num, embed_bias))
    if bf16:
        arrays = [t.contiguous().bfloat16().view(torch.int16).numpy().view("V2") for t in leaves]
    else:
        arrays = [t.contiguous().float().numpy() for t in leaves]
    (root / str(step) / "model").mkdir(parents=True)
    with open(root / str(step) / "model" / "0.npz", "wb") as f:
        np.savez(f, *arrays)
    (root / str(step) / "ckpt.json").write_text(json.dumps(
        {"process_count": 1, "step": step, "data_files": [], "data_file": 0, "data_batch": 0}))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return CodeGenForCausalLM(CodeGenConfig.from_preset("tiny")).eval()


def logits(m, ids):
    with torch.no_grad():
        return m(ids).logits


IDS = torch.tensor([[5, 17, 900, 3, 44, 1000, 8, 8, 250]])


def test_fp32_import_mp8_gives_the_same_logits(tmp_path, model):
    bias = torch.randn(model.config.n_embd) * 0.1
    write_jaxformer(tmp_path / "ckpt", 3000, model, mp_num=8, bf16=False, embed_bias=bias)
    source, config = import_jaxformer(tmp_path / "ckpt", tmp_path / "hf", n_head=4, rotary_dim=8, mp_num=8,
                                      n_positions=512)
    assert source == tmp_path / "ckpt" / "3000"
    assert (config.n_layer, config.n_embd, config.vocab_size) == (2, 64, 1024)
    _, imported = load_model(tmp_path / "hf")
    assert imported.dtype == torch.float32
    torch.testing.assert_close(logits(imported, IDS), logits(model, IDS), atol=1e-5, rtol=1e-5)
    # The qkv shard count matters: reading the same file as mp_num=4 scrambles the heads.
    import_jaxformer(tmp_path / "ckpt", tmp_path / "wrong", n_head=4, rotary_dim=8, mp_num=4, n_positions=512)
    assert not torch.allclose(logits(load_model(tmp_path / "wrong")[1], IDS), logits(model, IDS), atol=1e-3)


def test_bf16_void_leaves_and_the_latest_step_via_cli(tmp_path, model):
    bias = (torch.randn(model.config.n_embd) * 0.1).bfloat16().float()
    write_jaxformer(tmp_path / "ckpt", 10, model, mp_num=4, bf16=True, embed_bias=bias)
    write_jaxformer(tmp_path / "ckpt", 20, model, mp_num=4, bf16=True, embed_bias=bias)
    config = {"model_heads": 4, "model_pe_rotary_dims": 8, "model_seq_len": 512, "tpu_cores": 4}
    (tmp_path / "jf.json").write_text(json.dumps(config))
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "vocab.json").write_text("{}")
    rc = main(["convert", "jaxformer", str(tmp_path / "ckpt"), "--config", str(tmp_path / "jf.json"),
               "--out", str(tmp_path / "hf"), "--dtype", "float32", "--tokenizer", str(tok)])
    assert rc == 0 and (tmp_path / "hf" / "vocab.json").is_file()
    # What bf16 storage keeps: every leaf rounded to bf16, the embedding summed after rounding.
    reference = CodeGenForCausalLM(model.config).eval()
    state = {k: v.bfloat16().float() for k, v in model.state_dict().items()}
    state["transformer.wte.weight"] = (model.transformer.wte.weight - bias).bfloat16().float() + bias
    reference.load_state_dict(state)
    _, imported = load_model(tmp_path / "hf")
    torch.testing.assert_close(logits(imported, IDS), logits(reference, IDS), atol=1e-5, rtol=1e-5)


def test_malformed_checkpoints_are_clear_errors(tmp_path, model):
    write_jaxformer(tmp_path / "ckpt", 1, model, mp_num=4, bf16=False, embed_bias=torch.zeros(64))
    npz = tmp_path / "ckpt" / "1" / "model" / "0.npz"
    arrays = dict(np.load(npz))
    kwargs = dict(n_head=4, rotary_dim=8, mp_num=4)
    np.savez(npz, *[arrays[f"arr_{i}"] for i in range(13)])
    with pytest.raises(CheckpointError, match="13 arrays, a JAXFORMER CodeGen model has 14"):
        import_jaxformer(tmp_path / "ckpt", tmp_path / "out", **kwargs)
    np.savez(npz, *[arrays[f"arr_{i}"] for i in (0, 1, 2, 3, 4, 5, 6, 7, 9, 8, 10, 11, 12, 13)])
    with pytest.raises(CheckpointError, match="proj_in/b has shape"):
        import_jaxformer(tmp_path / "ckpt", tmp_path / "out", **kwargs)
    npz.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="not a readable npz"):
        import_jaxformer(tmp_path / "ckpt", tmp_path / "out", **kwargs)
    with pytest.raises(CheckpointError, match="no step 7"):
        import_jaxformer(tmp_path / "ckpt", tmp_path / "out", step=7, **kwargs)
    with pytest.raises(CheckpointError, match="neither a JAXFORMER step directory"):
        import_jaxformer(tmp_path / "nothing", tmp_path / "out", **kwargs)
