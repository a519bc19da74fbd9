"""Tiny random-init checkpoints of every family, saved as a user's checkpoint directory would be:
safetensors weights, config and a word-level tokenizer (the generic model: its processor too)."""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = (
    "what do you hear see the sound bark meow siren chirp dog cat bird car "
    # the shipped studies' prompts, split at whitespace as this tokenizer splits them
    "What hear? Answer with one word. user assistant model "
    # the Qwen chat template's default system turn
    "system You are a helpful assistant."
).split()
#: The chat templates' markers (Qwen and Gemma), special tokens after the words.
CHAT = ("<|im_start|>", "<|im_end|>", "<bos>", "<start_of_turn>", "<end_of_turn>")


def tokenizer(specials: dict[str, int], vocab_size: int, first_word: int):
    """A word-level fast tokenizer: specials at the given ids, WORDS from ``first_word``, then
    the chat markers; any other word is its unknown token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, **specials}
    for offset, word in enumerate(WORDS):
        vocab[word] = first_word + offset
    chat = {marker: first_word + len(WORDS) + index for index, marker in enumerate(CHAT)}
    vocab.update(chat)
    assert max(vocab.values()) < vocab_size
    model = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    model.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=model, unk_token="<unk>", additional_special_tokens=[*specials, *chat]
    )


def _seeded(build):
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        return build()
    finally:
        torch.random.set_rng_state(state)


QWEN_SPECIALS = {
    "<|AUDIO|>": 1,
    "<|IMAGE|>": 2,
    "<|VIDEO|>": 3,
    "<|audio_bos|>": 4,
    "<|audio_eos|>": 5,
    "<|vision_bos|>": 6,
    "<|vision_eos|>": 7,
}


def qwen2_5_omni_checkpoint(folder: Path) -> Path:
    """A 3-layer Qwen2.5-Omni thinker (hidden 32); 10 time positions per 1 s chunk, so that a
    2 s clip interleaves in several chunks."""
    from patchwork.loading.model import random_thinker
    from patchwork.study.specs import RandomInit

    model = random_thinker(RandomInit(layers=3, hidden_size=32, heads=2, kv_heads=1, seed=2))
    model.config.seconds_per_chunk = 1
    model.config.position_id_per_seconds = 10
    model.save_pretrained(folder)
    tokenizer(QWEN_SPECIALS, 64, 8).save_pretrained(folder)
    return folder


def qwen3_omni_checkpoint(folder: Path) -> Path:
    """A 3-layer Qwen3-Omni MoE thinker (4 experts, top 2) with DeepStack after layers 0, 1."""
    from transformers import Qwen3OmniMoeThinkerConfig, Qwen3OmniMoeThinkerForConditionalGeneration

    hidden = 32
    config = Qwen3OmniMoeThinkerConfig(
        audio_config=dict(
            num_mel_bins=32,
            encoder_layers=1,
            encoder_attention_heads=2,
            encoder_ffn_dim=64,
            d_model=32,
            output_dim=hidden,
            downsample_hidden_size=8,
        ),
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            patch_size=4,
            spatial_merge_size=2,
            temporal_patch_size=2,
            out_hidden_size=hidden,
            num_position_embeddings=64,
            deepstack_visual_indexes=[0, 1],
        ),
        text_config=dict(
            vocab_size=64,
            hidden_size=hidden,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            moe_intermediate_size=16,
            num_experts=4,
            num_experts_per_tok=2,
            max_position_embeddings=1024,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [2, 3, 3],
                "mrope_interleaved": True,
            },
        ),
        audio_token_id=1,
        image_token_id=2,
        video_token_id=3,
        audio_start_token_id=4,
        user_token_id=0,
    )
    config.audio_end_token_id = 5
    config.vision_start_token_id = 6
    config.vision_end_token_id = 7
    model = _seeded(lambda: Qwen3OmniMoeThinkerForConditionalGeneration(config))
    model.save_pretrained(folder)
    tokenizer(QWEN_SPECIALS, 64, 8).save_pretrained(folder)
    return folder


GEMMA_SPECIALS = {
    "<start_of_image>": 60,
    "<start_of_audio>": 62,
    "<end_of_image>": 64,
    "<image_soft_token>": 65,
    "<end_of_audio>": 72,
    "<audio_soft_token>": 73,
}
GEMMA_VISION_HIDDEN, GEMMA_IMAGE_TOKENS = 16, 4


def gemma3n_checkpoint(folder: Path) -> Path:
    """A 3-layer Gemma 3n (4 AltUp streams, hidden 32); text vocab 64, vision 64-71, audio 72-79.

    Saved from the class without a vision tower (timm is not installed), as a user's checkpoint
    would be loaded.
    """
    from transformers import Gemma3nConfig

    from patchwork.models.gemma3n import gemma3n_without_vision_class

    config = Gemma3nConfig(
        text_config=dict(
            vocab_size=80,
            vocab_size_per_layer_input=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            hidden_size_per_layer_input=8,
            altup_num_inputs=4,
            num_kv_shared_layers=0,
            laurel_rank=4,
            sliding_window=16,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            max_position_embeddings=512,
        ),
        vision_config=dict(hidden_size=GEMMA_VISION_HIDDEN, vocab_size=8, vocab_offset=64),
        audio_config=dict(
            vocab_size=8,
            vocab_offset=72,
            input_feat_size=32,
            hidden_size=16,
            conf_num_attention_heads=2,
            conf_num_hidden_layers=1,
            sscp_conv_channel_size=[8, 4],
            conf_attention_chunk_size=4,
            conf_attention_context_left=5,
            conf_attention_context_right=0,
        ),
        audio_soft_tokens_per_image=16,
        vision_soft_tokens_per_image=GEMMA_IMAGE_TOKENS,
        boi_token_id=60,
        eoi_token_id=64,
        image_token_id=65,
        boa_token_id=62,
        eoa_token_id=72,
        audio_token_id=73,
    )
    model = _seeded(lambda: gemma3n_without_vision_class()(config))
    model.save_pretrained(folder)
    tokenizer(GEMMA_SPECIALS, 80, 8).save_pretrained(folder)
    return folder


def qwen2_audio_checkpoint(folder: Path) -> Path:
    """A 2-layer Qwen2-Audio with its processor: a model no built-in adapter knows."""
    from transformers import (
        Qwen2AudioConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
        WhisperFeatureExtractor,
    )

    specials = {"<|AUDIO|>": 1, "<|audio_bos|>": 2, "<|audio_eos|>": 3}
    config = Qwen2AudioConfig(
        audio_config=dict(
            num_mel_bins=32,
            encoder_layers=1,
            encoder_attention_heads=2,
            encoder_ffn_dim=64,
            d_model=32,
            max_source_positions=150,  # 3 s windows instead of 30 s: 300 mel frames
        ),
        text_config=dict(
            model_type="qwen2",
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
        ),
        audio_token_id=1,
    )
    model = _seeded(lambda: Qwen2AudioForConditionalGeneration(config))
    model.save_pretrained(folder)
    extractor = WhisperFeatureExtractor(feature_size=32, sampling_rate=16_000, chunk_length=3)
    Qwen2AudioProcessor(
        feature_extractor=extractor, tokenizer=tokenizer(specials, 64, 8)
    ).save_pretrained(folder)
    return folder
