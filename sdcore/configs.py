"""The configs of Stable Diffusion 1.x, as the SD 1.5 release writes them, declared once.

The checkpoint loader reads them as the sd1 family's defaults (values that cannot be read
from tensor shapes, and what a folder's config.json may leave out); tests, tools and
benchmarks build their SD 1.5-sized reference models and folders from them. Each is the
dict a diffusers / transformers class takes: ``UNet2DConditionModel(**SD15_UNET)``,
``AutoencoderKL(**SD15_VAE)``, ``CLIPTextConfig(**SD15_TEXT_ENCODER)``,
``PNDMScheduler.from_config(SD15_SCHEDULER)``. Treat them as read-only: copy before
changing (``{**SD15_UNET, "sample_size": 32}``).
"""

SD15_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "only_cross_attention": False,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "dropout": 0.0,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-05,
    "cross_attention_dim": 768,
    "transformer_layers_per_block": 1,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    # diffusers' name for the number of heads in SD 1.x (8 everywhere, head size C / 8);
    # weights do not show it, so it is the family's constant
    "attention_head_dim": 8,
    "num_attention_heads": None,
    "dual_cross_attention": False,
    "use_linear_projection": False,
    "class_embed_type": None,
    "addition_embed_type": None,
    "num_class_embeds": None,
    "upcast_attention": False,
    "resnet_time_scale_shift": "default",
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
}

SD15_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
    "shift_factor": None,
    "latents_mean": None,
    "latents_std": None,
    "force_upcast": True,
    "use_quant_conv": True,
    "use_post_quant_conv": True,
    "mid_block_add_attention": True,
}

SD15_TEXT_ENCODER = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "projection_dim": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-05,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "initializer_factor": 1.0,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
}

SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "trained_betas": None,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}

# CLIP ViT-L/14 (SD 1.x's text encoder) has 64-wide attention heads
SD15_TEXT_HEAD_SIZE = 64


def _added_token(content):
    return {
        "content": content,
        "lstrip": False,
        "normalized": True,
        "rstrip": False,
        "single_word": False,
    }


# the tokenizer/ folder of SD 1.x models (openai/clip-vit-large-patch14)
SD15_TOKENIZER_CONFIG = {
    "add_prefix_space": False,
    "bos_token": {"__type": "AddedToken", **_added_token("<|startoftext|>")},
    "do_lower_case": True,
    "eos_token": {"__type": "AddedToken", **_added_token("<|endoftext|>")},
    "errors": "replace",
    "model_max_length": 77,
    "pad_token": "<|endoftext|>",
    "tokenizer_class": "CLIPTokenizer",
    "unk_token": {"__type": "AddedToken", **_added_token("<|endoftext|>")},
}
SD15_SPECIAL_TOKENS_MAP = {
    "bos_token": _added_token("<|startoftext|>"),
    "eos_token": _added_token("<|endoftext|>"),
    "pad_token": "<|endoftext|>",
    "unk_token": _added_token("<|endoftext|>"),
}

# every part of SD 1.5 by the name of its folder in a diffusers model
SD15 = {
    "unet": SD15_UNET,
    "vae": SD15_VAE,
    "text_encoder": SD15_TEXT_ENCODER,
    "scheduler": SD15_SCHEDULER,
}
