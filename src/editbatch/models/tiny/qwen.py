"""Tiny random Qwen-Image-Edit and Qwen-Image-Edit-Plus (same components, different pipeline class).

Both pipelines resize the condition image to about 1 MP whatever output size is
asked for, so the VAE encode dominates on CPU. The VAE here downsamples 8x like
the real one but is as thin as the class allows (8 channels throughout, no
encoder res blocks outside the middle block): about 1 s per 1 MP encode on two
cores, against about 3-4 s for base 8 / dim_mult [1,2,4,4] / one res block and
about 12 s for diffusers' test VAE. The image processor's pixel budget is kept
small for the same reason.
"""

from __future__ import annotations

from .text import qwen_tokenizer

TEXT_HIDDEN = 16
Z_DIM = 4


def build(plus: bool = False):
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageEditPipeline,
        QwenImageEditPlusPipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from .processor import OfflineQwen2VLProcessor

    tokenizer = qwen_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    text_encoder = Qwen2_5_VLForConditionalGeneration(
        Qwen2_5_VLConfig(
            text_config={
                "vocab_size": len(tokenizer),
                "hidden_size": TEXT_HIDDEN,
                "intermediate_size": 16,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "num_key_value_heads": 2,
                "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
                "rope_theta": 1000000.0,
                "bos_token_id": tokenizer.eos_token_id,
                "eos_token_id": ids("<|im_end|>"),
                "pad_token_id": tokenizer.pad_token_id,
            },
            vision_config={
                "depth": 2,
                "hidden_size": 16,
                "intermediate_size": 16,
                "num_heads": 2,
                "out_hidden_size": TEXT_HIDDEN,
                "fullatt_block_indexes": [1],
            },
            image_token_id=ids("<|image_pad|>"),
            video_token_id=ids("<|video_pad|>"),
            vision_start_token_id=ids("<|vision_start|>"),
            vision_end_token_id=ids("<|vision_end|>"),
        )
    )
    # 28 px = one merged 2x2 block of 14 px patches; at most 16x16 such blocks per image.
    image_processor = Qwen2VLImageProcessorPil(min_pixels=4 * 28 * 28, max_pixels=256 * 28 * 28)
    processor = OfflineQwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer)
    vae = AutoencoderKLQwenImage(
        base_dim=8,
        z_dim=Z_DIM,
        dim_mult=[1, 1, 1, 1],  # four levels: 8x down, as in the real VAE
        num_res_blocks=0,  # the encoder's full-resolution res blocks cost most on CPU
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * Z_DIM,
        latents_std=[1.0] * Z_DIM,
    )
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=Z_DIM * 4,
        out_channels=Z_DIM,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=3,
        joint_attention_dim=TEXT_HIDDEN,
        guidance_embeds=False,
        axes_dims_rope=(8, 4, 4),
    )
    pipeline_class = QwenImageEditPlusPipeline if plus else QwenImageEditPipeline
    return pipeline_class(
        scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        processor=processor,
        transformer=transformer,
    )
