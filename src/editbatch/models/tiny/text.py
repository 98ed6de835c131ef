"""Tokenizers built from in-memory vocabularies, so tiny pipelines need no hub download.

Every vocabulary is byte level with no merges: each character is one token.
That is all random-weight text encoders need, and it keeps the files small.
"""

from __future__ import annotations

import string

from tokenizers.pre_tokenizers import ByteLevel

CLIP_MAX_LENGTH = 77  # the real CLIP limit; without it the pipelines pad prompts to a huge default

QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def _byte_symbols() -> list[str]:
    return sorted(ByteLevel.alphabet())


def clip_tokenizer():
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):  # CLIP marks the last piece of every word with </w>
        for symbol in _byte_symbols():
            vocab.setdefault(symbol + suffix, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=CLIP_MAX_LENGTH)


def clip_text_encoder(tokenizer, hidden: int = 32):
    """A 2-layer CLIP text model sized to `tokenizer` (InstructPix2Pix's encoder, FLUX's first one)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=CLIP_MAX_LENGTH,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def t5_tokenizer():
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -1.0) for c in string.printable if not c.isspace()]
    return T5Tokenizer(vocab=pieces, extra_ids=4)


def qwen_tokenizer():
    """A Qwen2 tokenizer whose special tokens (chat and vision markers) sit after the byte symbols."""
    from transformers import Qwen2Tokenizer

    vocab = {symbol: i for i, symbol in enumerate(_byte_symbols())}
    for token in QWEN_SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[])
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIAL_TOKENS[1:])})
    return tokenizer
