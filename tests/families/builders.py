"""Tiny random-init checkpoints of every family, media files and studies that use them.

Each checkpoint directory is what a user would point a study at: safetensors weights, config,
a word-level tokenizer (and, for the generic model, its processor). Media: a Matroska clip with
lossless frames and a PCM soundtrack, swapped soundtracks as wav or Ogg, and precomputed
vision features for Gemma 3n.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

WORDS = "what do you hear see the sound bark meow siren chirp dog cat bird car".split()
SAMPLE_RATE = 16_000
FRAME = 32  # frame side in pixels (multiple of patch 4 × merge 2)


def tokenizer(specials: dict[str, int], vocab_size: int, first_word: int):
    """A word-level fast tokenizer: specials at the given ids, WORDS from ``first_word``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, **specials}
    for offset, word in enumerate(WORDS):
        vocab[word] = first_word + offset
    assert max(vocab.values()) < vocab_size
    model = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    model.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=model, unk_token="<unk>", additional_special_tokens=list(specials)
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
    from patchwork.models.loading import random_thinker
    from patchwork.study.schema import RandomInit

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
        ),
        text_config=dict(
            model_type="qwen2",
            vocab_size=32,
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
    extractor = WhisperFeatureExtractor(feature_size=32, sampling_rate=SAMPLE_RATE)
    Qwen2AudioProcessor(
        feature_extractor=extractor, tokenizer=tokenizer(specials, 32, 8)
    ).save_pretrained(folder)
    return folder


# --- media -------------------------------------------------------------------------------------


def tone(frequency: float, seconds: float, rate: int = SAMPLE_RATE) -> np.ndarray:
    times = np.arange(int(seconds * rate)) / rate
    return (0.4 * np.sin(2 * np.pi * frequency * times)).astype(np.float32)


def frames(seed: int, count: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (count, FRAME, FRAME, 3), dtype=np.uint8)


def write_clip(path: Path, pictures: np.ndarray, sound: np.ndarray, fps: int = 8) -> Path:
    """A Matroska clip: lossless FFV1 frames at ``fps`` and a 16-bit PCM mono soundtrack."""
    import av

    with av.open(str(path), mode="w") as container:
        video = container.add_stream("ffv1", rate=fps)
        video.width, video.height, video.pix_fmt = FRAME, FRAME, "bgr0"
        audio = container.add_stream("pcm_s16le", rate=SAMPLE_RATE, layout="mono")
        for picture in pictures:
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        pcm = (np.clip(sound, -1, 1) * 32767).astype(np.int16)[None]
        chunk = 1600
        for start in range(0, pcm.shape[1], chunk):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(pcm[:, start : start + chunk]), format="s16", layout="mono"
            )
            frame.sample_rate = SAMPLE_RATE
            frame.pts = start
            container.mux(audio.encode(frame))
        container.mux(audio.encode(None))
    return path


def write_ogg(path: Path, sound: np.ndarray, rate: int = 22_050) -> Path:
    """A sound at another rate in an Ogg/FLAC file (decoded and resampled through PyAV)."""
    import soundfile

    resampled = np.interp(
        np.arange(int(len(sound) * rate / SAMPLE_RATE)) * SAMPLE_RATE / rate,
        np.arange(len(sound)),
        sound,
    )
    soundfile.write(str(path), resampled, rate, format="OGG", subtype="VORBIS")
    return path


def media_folder(folder: Path) -> Path:
    """Two clips (own soundtrack), two swapped soundtracks, Gemma image features."""
    from patchwork.data.media import save_audio

    folder.mkdir(parents=True, exist_ok=True)
    for index, (name, pitch) in enumerate((("dog", 220.0), ("cat", 660.0))):
        write_clip(folder / f"{name}.mkv", frames(index, 16), tone(pitch, 2.0))
        save_audio(folder / f"{name}_swap.wav", tone(pitch * 1.5, 2.0))
        features = np.random.default_rng(10 + index).standard_normal(
            (1, GEMMA_IMAGE_TOKENS, GEMMA_VISION_HIDDEN)
        )
        np.save(folder / f"{name}_features.npy", features.astype(np.float32))
    write_ogg(folder / "bird.ogg", tone(440.0, 2.0))
    return folder


def write_manifest(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def study(
    folder: Path,
    family: str,
    checkpoint: Path,
    groups: str,
    extra_model: str = "",
    batch_size: int = 7,
) -> Path:
    """A study over ``samples.jsonl`` in ``folder``: clean → conflict, every layer, window 1."""
    path = folder / f"{family}.yaml"
    path.write_text(
        f"""\
name: {family}-tiny
model:
  family: {family}
  checkpoint: {checkpoint}
{extra_model}dataset:
  manifest: samples.jsonl
question: what do you hear
interventions:
  - kind: activation_patching
    from: clean
    into: conflict
    components: [residual, attention, mlp]
    layers: all
    position_groups: {groups}
    noise_floor: none
execution: {{batch_size: {batch_size}, unit_size: 2, seed: 0}}
"""
    )
    return path


GENERIC_BLOCK = """\
  generic:
    architecture: Qwen2AudioForConditionalGeneration
    layers: model.language_model.layers
    final_norm: model.language_model.norm
    unembed: lm_head
    position_groups: {audio: [1]}
    prompt: "<|audio_bos|><|AUDIO|><|audio_eos|> {question}"
    media: [audio]
"""


def family_rows(family: str, media: Path, audio_in_video: bool | None = None) -> list[dict]:
    """Two counterfactual samples per family, from the media folder (absolute paths).

    qwen2_5_omni: the soundtrack interleaved in the clip; the conflict run swaps the picture
    (the other clip's frames) under the same sound. qwen3_omni: the same with the soundtrack as a
    separate audio. gemma3n: clip soundtrack + precomputed image features. generic (Qwen2-Audio):
    the clip's soundtrack vs another sound (Ogg at 22.05 kHz, resampled). ``audio_in_video``
    overrides whether Qwen clips interleave their soundtrack (default: Qwen2.5 yes, Qwen3 no).
    """
    rows = []
    for own, other in (("dog", "cat"), ("cat", "dog")):
        clip, other_clip = str(media / f"{own}.mkv"), str(media / f"{other}.mkv")
        if family in ("qwen2_5_omni", "qwen3_omni"):
            interleave = family == "qwen2_5_omni" if audio_in_video is None else audio_in_video
            runs = {
                "clean": {"video": clip, "audio_in_video": interleave},
                "conflict": {"video": other_clip, "audio": clip, "audio_in_video": interleave},
            }
        elif family == "gemma3n":
            runs = {
                "clean": {"audio": clip, "image_features": str(media / f"{own}_features.npy")},
                "conflict": {"audio": clip, "image_features": str(media / f"{other}_features.npy")},
            }
        else:
            runs = {"clean": {"audio": clip}, "conflict": {"audio": str(media / "bird.ogg")}}
        rows.append({"id": own, "audio_answer": "bark", "visual_answer": "meow", "runs": runs})
    return rows


FAMILY_GROUPS = {
    "qwen2_5_omni": "[audio, video, text, answer]",
    "qwen3_omni": "[audio, video, text, answer]",
    "gemma3n": "[audio, image, text, answer]",
    "generic": "[audio, text, answer]",
}


def family_study(
    folder: Path,
    family: str,
    checkpoint: Path,
    media: Path,
    audio_in_video: bool | None = None,
    **options,
) -> Path:
    """Manifest and study of ``family`` in ``folder``."""
    write_manifest(folder / "samples.jsonl", family_rows(family, media, audio_in_video))
    extra = GENERIC_BLOCK if family == "generic" else ""
    return study(folder, family, checkpoint, FAMILY_GROUPS[family], extra, **options)
