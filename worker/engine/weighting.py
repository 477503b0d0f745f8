"""``(words:1.3)`` prompt weighting for SD 1.x and SDXL, through compel.

Only a call whose prompts use the syntax (``easel.shared.adapters.has_weighting``) is
encoded here; others go to the pipeline as text, as before. Every prompt of such a call
is encoded by compel, truncated at the text encoder's 77 tokens as the pipeline would,
so an unweighted prompt gets the embeddings the pipeline itself would make and a job's
pixels do not depend on its batch. The web tier refuses the syntax for other families.
"""

from __future__ import annotations

from typing import Any

from easel.shared.adapters import has_weighting, to_compel_syntax


def uses_weighting(prompts: list[str], negative_prompts: list[str]) -> bool:
    """Whether any prompt of a call is weighted."""
    return any(has_weighting(text) for text in (*prompts, *negative_prompts))


def weighted_embeddings(pipe: Any, prompts: list[str], negative_prompts: list[str]) -> dict[str, Any]:
    """``prompt_embeds`` and ``negative_prompt_embeds`` (and the pooled ones for SDXL)
    of ``prompts``, to pass to the pipeline instead of the text."""
    from compel import Compel, ReturnedEmbeddingsType

    positive = [to_compel_syntax(text) for text in prompts]
    negative = [to_compel_syntax(text) for text in negative_prompts]
    device = pipe.text_encoder.device if pipe.text_encoder is not None else pipe.device
    if getattr(pipe, "text_encoder_2", None) is not None:  # SDXL: two encoders, one pooled
        compel = Compel(
            tokenizer=[pipe.tokenizer, pipe.tokenizer_2],
            text_encoder=[pipe.text_encoder, pipe.text_encoder_2],
            returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,
            requires_pooled=[False, True],
            truncate_long_prompts=True,
            device=device,
        )
        embeds, pooled = compel(positive)
        negative_embeds, negative_pooled = compel(negative)
        return {
            "prompt_embeds": embeds,
            "pooled_prompt_embeds": pooled,
            "negative_prompt_embeds": negative_embeds,
            "negative_pooled_prompt_embeds": negative_pooled,
        }
    compel = Compel(
        tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, truncate_long_prompts=True, device=device
    )
    return {"prompt_embeds": compel(positive), "negative_prompt_embeds": compel(negative)}
