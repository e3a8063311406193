"""The UNet (sdcore._C.UNet) against diffusers' UNet2DConditionModel.

The reference model is built from a config with every parameter drawn afresh (normal,
std 1/sqrt(fan_in) for matrices and kernels, 0.3 for vectors, so that no path is zero
and activations keep their scale through the net), run in float64; ours runs in float32
on the same weights. Tolerance: max|ours - ref| / max|ref| <= 1e-4 for the small
configs, 1e-3 for the full SD 1.5 config against diffusers in float32 (whose own
rounding over 860M parameters is of that order).
"""

import gc
import time

import numpy as np
import pytest
import torch

import sdcore
from sdcore import _C
from sdcore.configs import SD15_UNET as SD15

diffusers = pytest.importorskip("diffusers")

REL_MAX = 1e-4
REL_MAX_SD15 = 1e-3

TWO_LEVEL = dict(
    block_out_channels=(32, 64),
    layers_per_block=1,
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=8,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    sample_size=16,
)
TWO_LEVEL_DEEPER = dict(TWO_LEVEL, layers_per_block=2, attention_head_dim=2, norm_num_groups=16)
# linear proj_in/proj_out (SD 2.x) and two transformer blocks per attention
THREE_LEVEL = dict(
    block_out_channels=(32, 48, 64),
    layers_per_block=2,
    cross_attention_dim=24,
    attention_head_dim=4,
    norm_num_groups=16,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    use_linear_projection=True,
    transformer_layers_per_block=2,
    sample_size=16,
)
# SD 1.5's pattern of blocks, small, with a per-block list of head counts (as SD 2.x)
FOUR_LEVEL = dict(
    block_out_channels=(32, 32, 64, 64),
    layers_per_block=2,
    cross_attention_dim=40,
    attention_head_dim=[2, 4, 4, 8],
    norm_num_groups=8,
    down_block_types=(
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    sample_size=16,
)
CONFIGS = {
    "two_level": TWO_LEVEL,
    "two_level_deeper": TWO_LEVEL_DEEPER,
    "three_level_linear_proj": THREE_LEVEL,
    "four_level_head_list": FOUR_LEVEL,
}


def reference_model(config, seed):
    """diffusers' UNet with every parameter redrawn, in eval mode."""
    torch.manual_seed(seed)
    model = diffusers.UNet2DConditionModel(**config).eval()
    with torch.no_grad():
        for p in model.parameters():
            std = p[0].numel() ** -0.5 if p.ndim >= 2 else 0.3
            torch.nn.init.normal_(p, std=std)
    return model


def our_model(model):
    """sdcore's UNet on the reference's float32 weights (shared, not copied)."""
    arrays = {k: v.detach().contiguous().numpy() for k, v in model.state_dict().items()}
    weights = _C.Weights.from_arrays(arrays)
    return _C.UNet(weights, dict(model.config))


def inputs(rng, config, batch, height, width, tokens=77):
    sample = rng.standard_normal((batch, 4, height, width)).astype(np.float32)
    timesteps = rng.uniform(0, 1000, batch).astype(np.float32)
    context = rng.standard_normal((batch, tokens, config["cross_attention_dim"])).astype(np.float32)
    return sample, timesteps, context


def run_reference(model, sample, timesteps, context, dtype):
    t = lambda a: torch.from_numpy(a).to(dtype)  # noqa: E731
    with torch.no_grad():
        return model(t(sample), t(timesteps), t(context)).sample.double().numpy()


def rel_max(ours, ref):
    return np.abs(ours.astype(np.float64) - ref).max() / np.abs(ref).max()


def report(capsys, text):
    with capsys.disabled():
        print(f"\n  {text}")


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_diffusers(rng, capsys, name, batch):
    config = CONFIGS[name]
    ref_model = reference_model(config, int(rng.integers(2**31)))
    ours_model = our_model(ref_model)
    sample, timesteps, context = inputs(rng, config, batch, 16, 8)

    start = time.perf_counter()
    ours = ours_model.forward(sample, timesteps, context)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    run_reference(ref_model, sample, timesteps, context, torch.float32)
    ref32_s = time.perf_counter() - start
    ref = run_reference(ref_model.double(), sample, timesteps, context, torch.float64)

    assert ours.shape == ref.shape == (batch, 4, 16, 8)
    assert np.isfinite(ours).all()
    err = rel_max(ours, ref)
    report(
        capsys,
        f"{name} B={batch}: rel max err {err:.2e}; "
        f"sdcore {ours_s * 1e3:.1f} ms, diffusers f32 {ref32_s * 1e3:.1f} ms",
    )
    assert err <= REL_MAX, f"relative max error {err:.3g}"
    # a second call reuses the planned activations and gives the same result
    np.testing.assert_array_equal(ours_model.forward(sample, timesteps, context), ours)


def test_scalar_timestep_and_other_token_count(rng):
    ref_model = reference_model(TWO_LEVEL, int(rng.integers(2**31)))
    ours_model = our_model(ref_model)
    sample, _, context = inputs(rng, TWO_LEVEL, 2, 8, 16, tokens=154)
    ours = ours_model.forward(sample, 321.5, context)
    ref = run_reference(
        ref_model.double(), sample, np.array([321.5, 321.5], np.float32), context, torch.float64
    )
    assert rel_max(ours, ref) <= REL_MAX


def test_threads_share_one_model(rng):
    """Forwards from several threads on one model wait for each other (GIL released)."""
    from concurrent.futures import ThreadPoolExecutor

    ours_model = our_model(reference_model(TWO_LEVEL, int(rng.integers(2**31))))
    jobs = [inputs(rng, TWO_LEVEL, 1, 8, 8) for _ in range(4)]
    serial = [ours_model.forward(*j) for j in jobs]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda j: ours_model.forward(*j), jobs))
    for a, b in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------ errors ----


@pytest.fixture(scope="module")
def small_state():
    model = reference_model(TWO_LEVEL, 0)
    state = {k: v.detach().contiguous().numpy() for k, v in model.state_dict().items()}
    return state, dict(model.config)


def test_missing_tensor_is_named(small_state):
    state, config = small_state
    name = "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    broken = {k: v for k, v in state.items() if k != name}
    with pytest.raises(sdcore.FormatError, match=f"'{name}' is missing"):
        _C.UNet(_C.Weights.from_arrays(broken), config)


@pytest.mark.parametrize(
    "name",
    [
        "down_blocks.0.attentions.0.proj_in.weight",
        "down_blocks.0.downsamplers.0.conv.weight",
        "mid_block.resnets.1.time_emb_proj.weight",
        "up_blocks.0.resnets.1.conv1.weight",
        "time_embedding.linear_2.bias",
    ],
)
def test_misshaped_tensor_is_named(small_state, name):
    state, config = small_state
    broken = dict(state)
    broken[name] = np.zeros(state[name].shape[:-1] + (state[name].shape[-1] + 1,), np.float32)
    with pytest.raises(sdcore.FormatError, match=f"'{name}' has shape"):
        _C.UNet(_C.Weights.from_arrays(broken), config)


@pytest.mark.parametrize(
    "change,field",
    [
        (dict(block_out_channels=(32, 60)), "block_out_channels"),  # 60 % 8 groups
        (dict(block_out_channels=[]), "block_out_channels"),
        (dict(attention_head_dim=3), "attention_head_dim"),  # does not divide 32
        (dict(attention_head_dim=[8, 8, 8]), "attention_head_dim"),
        (dict(layers_per_block=0), "layers_per_block"),
        (dict(layers_per_block="2"), "layers_per_block"),
        (dict(down_block_types=("CrossAttnDownBlock2D", "SimpleDownBlock2D")), "down_block_types"),
        (dict(up_block_types=("UpBlock2D",)), "up_block_types"),
        (dict(norm_eps=-1.0), "norm_eps"),
        (dict(norm_num_groups=None), "norm_num_groups"),
        (dict(use_linear_projection="yes"), "use_linear_projection"),
        (dict(cross_attention_dim=[32, 32]), "cross_attention_dim"),
        (dict(act_fn="gelu"), "act_fn"),
        (dict(resnet_time_scale_shift="scale_shift"), "resnet_time_scale_shift"),
        (dict(class_embed_type="timestep"), "class_embed_type"),
        (dict(time_embedding_dim=100), "time_embedding_dim"),
        (dict(a_field_from_the_future=1), "a_field_from_the_future"),
    ],
)
def test_bad_config_field_is_named(small_state, change, field):
    state, config = small_state
    with pytest.raises(ValueError, match=field):
        _C.UNet(_C.Weights.from_arrays(state), dict(config, **change))


def test_config_dict_of_diffusers_is_accepted(small_state):
    state, config = small_state
    # the dict as config.json holds it, with diffusers' private keys and ignored fields
    full = dict(config, _class_name="UNet2DConditionModel", _diffusers_version="0.42.0")
    model = _C.UNet(_C.Weights.from_arrays(state), full)
    assert model.config["block_out_channels"] == config["block_out_channels"]
    assert model.device == "cpu"


def test_bad_forward_arguments(rng):
    config = FOUR_LEVEL
    model = our_model(reference_model(config, int(rng.integers(2**31))))
    sample, t, context = inputs(rng, config, 2, 16, 8)
    with pytest.raises(ValueError, match="multiples of 8"):
        model.forward(sample[:, :, :12].copy(), t, context)
    with pytest.raises(ValueError, match="multiples of 8"):
        model.forward(np.ascontiguousarray(sample[:, :, :, :4]), t, context)
    with pytest.raises(ValueError, match="sample"):
        model.forward(sample[:, :3].copy(), t, context)
    with pytest.raises(ValueError, match="context"):
        model.forward(sample, t, context[:1])
    with pytest.raises(ValueError, match="context"):
        model.forward(sample, t, context[:, :, :16].copy())
    with pytest.raises(ValueError, match="timesteps"):
        model.forward(sample, t[:1], context)
    with pytest.raises(ValueError, match="timesteps"):
        model.forward(sample, np.array([1.0, np.nan]), context)
    with pytest.raises(TypeError, match="timesteps"):
        model.forward(sample, "ten", context)
    with pytest.raises(TypeError, match="sample"):
        model.forward(sample.astype(np.float64), t, context)
    with pytest.raises(TypeError, match="weights"):
        _C.UNet({}, config)


# ------------------------------------------------------------------ SD 1.5 ----


def test_sd15_config(rng, capsys):
    """The real SD 1.5 UNet (860M parameters) at a 16x16 latent with 77 tokens."""
    ref_model = reference_model(SD15, int(rng.integers(2**31)))
    ours_model = our_model(ref_model)
    sample, timesteps, context = inputs(rng, SD15, 1, 16, 16)
    start = time.perf_counter()
    ours = ours_model.forward(sample, timesteps, context)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    ref = run_reference(ref_model, sample, timesteps, context, torch.float32)
    ref_s = time.perf_counter() - start
    err = rel_max(ours, ref)
    mib = ours_model.activation_bytes / 2**20
    report(
        capsys,
        f"SD 1.5 1x4x16x16: rel max err {err:.2e}; sdcore {ours_s:.2f} s, "
        f"diffusers f32 {ref_s:.2f} s; activations {mib:.0f} MiB",
    )
    del ours_model, ref_model
    gc.collect()
    assert err <= REL_MAX_SD15, f"relative max error {err:.3g}"


def test_arena_planned_per_shape(rng):
    """Activation memory is planned before each run: it grows for a larger shape, keeps
    its size for a smaller one, and a shape run again gives the same numbers."""
    model = our_model(reference_model(TWO_LEVEL, int(rng.integers(2**31))))
    big = inputs(rng, TWO_LEVEL, 2, 16, 16)
    first = model.forward(*big)
    size = model.activation_bytes
    assert size > 0
    model.forward(*inputs(rng, TWO_LEVEL, 1, 8, 8))
    assert model.activation_bytes == size
    again = model.forward(*big)
    assert np.array_equal(first, again)
    model.forward(*inputs(rng, TWO_LEVEL, 2, 32, 16))
    assert model.activation_bytes > size
    assert np.array_equal(model.forward(*big), first)
