"""The CLIP text encoder against transformers' CLIPTextModel with random weights."""

import numpy as np
import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel

import sdcore
from sdcore import _C, ops
from sdcore.configs import SD15_TEXT_ENCODER
from sdcore.text_encoder import TextEncoder

SMALL = dict(
    vocab_size=1000,
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
)


def make_model(seed, **config):
    torch.manual_seed(seed)
    cfg = CLIPTextConfig(**config)
    model = CLIPTextModel(cfg).eval()
    # random init leaves the layer norms at (1, 0): give every parameter real values
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(
                    1 + 0.1 * torch.randn_like(p)
                    if name.endswith("weight")
                    else 0.1 * torch.randn_like(p)
                )
    # checkpoints name these "text_model.*" (transformers 5 drops the prefix in memory)
    state = {
        k if k.startswith("text_model.") else "text_model." + k: v.detach().numpy().copy()
        for k, v in model.state_dict().items()
        if not k.endswith("position_ids")
    }
    return model, cfg, state


def final_layer_norm(model):
    return getattr(model, "text_model", model).final_layer_norm


def rel_err(ours, ref):
    return np.abs(ours - ref).max() / np.abs(ref).max()


def random_ids(rng, B, T, vocab):
    ids = rng.integers(0, vocab - 2, (B, T)).astype(np.int32)
    ids[:, 0] = vocab - 2  # a BOS-like first token
    ids[:, T // 2 :] = vocab - 1  # EOS then padding, as SD prompts are
    return ids


@pytest.mark.parametrize("B", [1, 3])
def test_small_config_matches_transformers(rng, B):
    model, cfg, state = make_model(int(rng.integers(1 << 30)), **SMALL)
    enc = TextEncoder(cfg.to_dict(), _C.Weights.from_arrays(state))
    ids = random_ids(rng, B, 77, SMALL["vocab_size"])
    with torch.no_grad():
        ref = model(torch.from_numpy(ids).long(), output_hidden_states=True)
    assert rel_err(enc.encode(ids), ref.last_hidden_state.numpy()) <= 1e-4
    # clip_skip 2: the second-to-last layer's output through the final layer norm
    skip_ref = final_layer_norm(model)(ref.hidden_states[-2]).detach().numpy()
    assert rel_err(enc.encode(ids, clip_skip=2), skip_ref) <= 1e-4


def test_gelu_activation_and_short_sequence(rng):
    model, cfg, state = make_model(int(rng.integers(1 << 30)), **{**SMALL, "hidden_act": "gelu"})
    enc = TextEncoder(cfg.to_dict(), _C.Weights.from_arrays(state))
    ids = random_ids(rng, 2, 20, SMALL["vocab_size"])
    with torch.no_grad():
        ref = model(torch.from_numpy(ids).long()).last_hidden_state.numpy()
    assert rel_err(enc.encode(ids), ref) <= 1e-4


def test_half_weights(rng):
    model, cfg, state = make_model(int(rng.integers(1 << 30)), **SMALL)
    half = {k: v.astype(np.float16) for k, v in state.items()}
    # the reference runs in f32 on the same f16-rounded weights
    prefix = "" if hasattr(model, "text_model") else "text_model."
    model.load_state_dict(
        {k.removeprefix(prefix): torch.from_numpy(v.astype(np.float32)) for k, v in half.items()},
        strict=False,
    )
    enc = TextEncoder(cfg.to_dict(), _C.Weights.from_arrays(half))
    ids = random_ids(rng, 1, 77, SMALL["vocab_size"])
    with torch.no_grad():
        ref = model(torch.from_numpy(ids).long()).last_hidden_state.numpy()
    assert rel_err(enc.encode(ids), ref) <= 1e-4


def test_sd15_config(rng):
    """The real 123M-parameter text tower of SD 1.x, once."""
    model, cfg, state = make_model(int(rng.integers(1 << 30)), **SD15_TEXT_ENCODER)
    enc = TextEncoder(cfg.to_dict(), _C.Weights.from_arrays(state))
    ids = random_ids(rng, 1, 77, SD15_TEXT_ENCODER["vocab_size"])
    with torch.no_grad():
        ref = model(torch.from_numpy(ids).long()).last_hidden_state.numpy()
    assert rel_err(enc.encode(ids), ref) <= 1e-4


def test_errors_name_the_problem(rng):
    _, cfg, state = make_model(0, **SMALL)
    missing = dict(state)
    del missing["text_model.encoder.layers.1.mlp.fc2.bias"]
    with pytest.raises(sdcore.FormatError, match=r"layers\.1\.mlp\.fc2\.bias"):
        TextEncoder(cfg.to_dict(), _C.Weights.from_arrays(missing))
    bad = dict(state)
    bad["text_model.final_layer_norm.weight"] = np.ones(63, np.float32)
    with pytest.raises(sdcore.FormatError, match="final_layer_norm.weight.*shape"):
        TextEncoder(cfg.to_dict(), _C.Weights.from_arrays(bad))
    enc = TextEncoder(cfg.to_dict(), _C.Weights.from_arrays(state))
    with pytest.raises(ValueError, match="id 1000"):
        enc.encode(np.full((1, 5), 1000, np.int32))
    with pytest.raises(ValueError, match="tokens"):
        enc.encode(np.zeros((1, 78), np.int32))
    with pytest.raises(ValueError, match="clip_skip"):
        enc.encode(np.zeros((1, 5), np.int32), clip_skip=4)
    with pytest.raises(TypeError, match="integers"):
        enc.encode(np.zeros((1, 5), np.float32))
    # int64 ids that int32 would wrap onto valid ones
    with pytest.raises(ValueError, match="outside"):
        enc.encode(np.full((1, 5), 2**32 + 5, np.int64))
    with pytest.raises(ValueError, match="outside"):
        enc.encode(np.full((1, 5), -1, np.int64))
    with pytest.raises(ValueError, match="hidden_size"):
        TextEncoder({**cfg.to_dict(), "hidden_size": 2**40}, _C.Weights.from_arrays(state))
    with pytest.raises(ValueError, match="layer_norm_eps"):
        TextEncoder(
            {**cfg.to_dict(), "layer_norm_eps": float("inf")}, _C.Weights.from_arrays(state)
        )
    with pytest.raises(ValueError, match="num_attention_heads"):
        TextEncoder({**cfg.to_dict(), "num_attention_heads": 5}, _C.Weights.from_arrays(state))
    with pytest.raises(ValueError, match="hidden_act"):
        TextEncoder({**cfg.to_dict(), "hidden_act": "relu"}, _C.Weights.from_arrays(state))


def test_embedding_op(rng):
    table = rng.standard_normal((50, 8)).astype(np.float32)
    ids = rng.integers(0, 50, 30).astype(np.int32)
    assert np.array_equal(ops.embedding(table, ids), table[ids])
    half = table.astype(np.float16)
    assert np.array_equal(ops.embedding(half, ids), half[ids].astype(np.float32))
    with pytest.raises(ValueError, match="outside"):
        ops.embedding(table, np.array([50], np.int32))
    with pytest.raises(TypeError, match="int32"):
        ops.embedding(table, ids.astype(np.int64))
