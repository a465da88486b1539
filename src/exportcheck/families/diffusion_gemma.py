"""DiffusionGemma: a Gemma 4 encoder of the prompt and a bidirectional decoder that
refines a canvas of tokens (block diffusion), with a mixture of experts in every layer."""

from __future__ import annotations

from . import Family, register

register(
    Family(
        name="diffusion_gemma",
        model_types=("diffusion_gemma",),
        config_fixes={
            "diffusion_gemma": (
                {
                    "text_config.num_experts": 4,
                    "text_config.top_k_experts": 2,
                    "text_config.moe_intermediate_size": 32,
                },
                "the config class leaves num_experts, top_k_experts and "
                "moe_intermediate_size None, while every encoder and decoder layer builds "
                "a router (a Linear of num_experts outputs, a top-k of top_k_experts) and "
                "experts of moe_intermediate_size (modeling_diffusion_gemma.py, "
                "DiffusionGemmaTextRouter and DiffusionGemmaTextExperts): the checkpoint "
                "its config documents (google/diffusiongemma-26B-A4B-it) is a mixture of "
                "experts; the tiny config gets exportcheck's tiny expert sizes (4 experts, "
                "2 per token, expert width 32)",
            )
        },
    )
)
