"""``(words:1.3)`` prompt weighting for SD 1.x and SDXL, through compel.

Only a call whose prompts use the syntax (``easel.shared.adapters.has_weighting``) is
encoded here; others go to the pipeline as text, as before. Every prompt of such a call
is encoded by compel, truncated at the text encoder's 77 tokens as the pipeline would,
so an unweighted prompt gets the embeddings the pipeline itself would make and a job's
pixels do not depend on its batch. SDXL's pooled embedding is of the words without their
weights (compel would pool the raw text, brackets included). The web tier refuses the
syntax for other families.
"""

from __future__ import annotations

from typing import Any

from easel.shared.adapters import has_weighting, strip_weighting, to_compel_syntax


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
        import torch

        penultimate = ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED
        both = dict(returned_embeddings_type=penultimate, truncate_long_prompts=True, device=device)
        first = Compel(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, **both)
        second = Compel(
            tokenizer=pipe.tokenizer_2, text_encoder=pipe.text_encoder_2, requires_pooled=True, **both
        )

        def encode(texts: list[str], originals: list[str]) -> tuple[Any, Any]:
            # Both encoders truncate at 77 tokens, so their outputs concatenate as the
            # pipeline's do. compel pools the raw text, brackets included: pool the plain
            # words instead (the pooled embedding is not weighted), so weight 1.0 draws as none.
            embeds = torch.cat([first(texts), second(texts)[0]], dim=-1)
            return embeds, second([strip_weighting(text) for text in originals])[1]

        embeds, pooled = encode(positive, prompts)
        negative_embeds, negative_pooled = encode(negative, negative_prompts)
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
