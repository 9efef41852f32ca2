"""A tiny randomly initialised Hunyuan3D-2 model, saved in the published layout.

It has the real architecture (Hunyuan3DDiT, ShapeVAE, a DINOv2 conditioner built from a
config dict) at toy sizes, so the backend's real loading and batching code runs offline in
seconds. Random weights decode to a field with no surface, so the geometry decoder is set
by hand to produce a closed blob: its query projection feeds a smooth "inside the ball"
score through the residual path, and the random cross-attention to the latents, sharpened
and scaled up, dents the ball differently for every latent. Each item thus gets its own
closed mesh that depends on its seed, which is what the batch-vs-sequential check needs.
"""

from __future__ import annotations

from pathlib import Path

import yaml

SUBFOLDER = "hunyuan3d-dit-v2-0"
LATENT_CHANNELS = 8
CONDITION_WIDTH = 32
DECODER_WIDTH = 32
NUM_FREQS = 4
BALL_LEVEL = 2.3
BALL_FREQUENCY_INDEX = 1
BALL_GAIN = 4.0
DENT_SCALE = 4.0
ATTENTION_SHARPNESS = 3.0
QUERY_GAIN = 6.0

TINY_CONFIG = {
    "model": {
        "target": "hy3dgen.shapegen.models.Hunyuan3DDiT",
        "params": {
            "in_channels": LATENT_CHANNELS,
            "context_in_dim": CONDITION_WIDTH,
            "hidden_size": 32,
            "mlp_ratio": 2.0,
            "num_heads": 2,
            "depth": 1,
            "depth_single_blocks": 1,
            "axes_dim": [16],
            "theta": 10000,
            "qkv_bias": True,
        },
    },
    "vae": {
        "target": "hy3dgen.shapegen.models.ShapeVAE",
        "params": {
            "num_latents": 64,
            "embed_dim": LATENT_CHANNELS,
            "num_freqs": NUM_FREQS,
            "include_pi": False,
            "heads": 4,
            "width": DECODER_WIDTH,
            "num_decoder_layers": 1,
            "qkv_bias": False,
            "qk_norm": True,
            "scale_factor": 1.0,
        },
    },
    "conditioner": {
        "target": "hy3dgen.shapegen.models.SingleImageEncoder",
        "params": {
            "main_image_encoder": {
                "type": "DinoImageEncoder",
                "kwargs": {
                    "config": {
                        "model_type": "dinov2",
                        "hidden_size": CONDITION_WIDTH,
                        "num_attention_heads": 2,
                        "num_hidden_layers": 1,
                        "mlp_ratio": 2,
                        "patch_size": 14,
                        "image_size": 56,
                        "num_channels": 3,
                        "qkv_bias": True,
                        "use_swiglu_ffn": False,
                        "layerscale_value": 1.0,
                        "layer_norm_eps": 1e-6,
                    },
                    "image_size": 56,
                    "use_cls_token": True,
                },
            }
        },
    },
    "scheduler": {
        "target": "hy3dgen.shapegen.schedulers.FlowMatchEulerDiscreteScheduler",
        "params": {"num_train_timesteps": 1000},
    },
    "image_processor": {
        "target": "hy3dgen.shapegen.preprocessors.ImageProcessorV2",
        "params": {"size": 64, "border_ratio": 0.15},
    },
}


def build_tiny_hunyuan3d(root: str | Path, seed: int = 0) -> Path:
    """Write `<root>/hunyuan3d-dit-v2-0/{config.yaml, model.fp16.safetensors}`; returns root."""
    import safetensors.torch
    import torch
    from hy3dgen.shapegen.pipelines import instantiate_from_config

    root = Path(root)
    folder = root / SUBFOLDER
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        parts = {name: instantiate_from_config(TINY_CONFIG[name]) for name in ("model", "vae", "conditioner")}
    _shape_decoder_as_dented_ball(parts["vae"].geo_decoder)
    tensors = {
        f"{name}.{key}": value.detach().to(torch.float16).contiguous()
        for name, module in parts.items()
        for key, value in module.state_dict().items()
    }
    safetensors.torch.save_file(tensors, str(folder / "model.fp16.safetensors"))
    (folder / "config.yaml").write_text(yaml.safe_dump(TINY_CONFIG, sort_keys=False))
    return root


def _shape_decoder_as_dented_ball(geo_decoder) -> None:
    """Occupancy logit ~ BALL_GAIN * (cos 2x + cos 2y + cos 2z - BALL_LEVEL) plus latent dents.

    The Fourier embedding is [xyz, sin(f * xyz), cos(f * xyz)] with f = 1, 2, 4, ...; the
    f = 2 cosines sum to 3 at the centre and at most 1.6 on the box boundary, so the level
    set is a closed ball of radius ~0.6 with a wide margin on both sides. Channels 0/1 carry
    +score/-score and channels 2/3 a constant, so the layer norm keeps the score's sign and
    stays smooth; the other channels keep (amplified) random position features, so the
    cross-attention to the latents varies over space and dents the ball, not just shrinks it.
    """
    import torch

    block = geo_decoder.cross_attn_decoder
    with torch.no_grad():
        cosines = [3 + 3 * NUM_FREQS + axis * NUM_FREQS + BALL_FREQUENCY_INDEX for axis in range(3)]
        geo_decoder.query_proj.weight.mul_(QUERY_GAIN)
        geo_decoder.query_proj.weight[:4] = 0.0
        geo_decoder.query_proj.bias.zero_()
        geo_decoder.query_proj.weight[0, cosines] = BALL_GAIN
        geo_decoder.query_proj.weight[1, cosines] = -BALL_GAIN
        geo_decoder.query_proj.bias[:4] = torch.tensor(
            [-BALL_GAIN * BALL_LEVEL, BALL_GAIN * BALL_LEVEL, 1.0, -1.0]
        )
        block.attn.attention.q_norm.weight.mul_(ATTENTION_SHARPNESS)
        block.attn.attention.k_norm.weight.mul_(ATTENTION_SHARPNESS)
        block.attn.c_proj.weight.mul_(DENT_SCALE)
        block.attn.c_proj.bias.zero_()
        block.mlp.c_proj.weight.zero_()
        block.mlp.c_proj.bias.zero_()
        geo_decoder.output_proj.weight.zero_()
        geo_decoder.output_proj.weight[0, 0] = 1.0
        geo_decoder.output_proj.weight[0, 1] = -1.0
        geo_decoder.output_proj.bias.zero_()
