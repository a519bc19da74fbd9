"""``patchwork inspect`` writes the model card's inputs for clips outside the video budget and
longer than 16 s (issue #25's acceptance; reference environment).

A study over a manifest of generated mp4 clips, on a checkpoint folder as published (Qwen2.5-Omni's
thinker config with its token ids, vocabulary, patch sizes and time scales, its hidden sizes
shrunk so that its weights are a few MB; its preprocessor config, chat template and a tokenizer
with the real special-token ids). ``patchwork inspect STUDY --sample ID --out DIR`` (the CLI)
writes ``inputs.safetensors``; the model card's route for the same files is the chat template,
``qwen_omni_utils.process_mm_info`` and ``Qwen2_5OmniProcessor`` built from the same folder.

Frame areas 19,200 and 36,864 px (below the video budget's 100,352 px: upscaled) and 921,600 and
2,073,600 px (720p, portrait 1080p: above its 602,112 px, downscaled); 17 and 24 s (34 and 48
frames, past the 32 that patchwork once cut at); AAC tracks interleaved or read as separate
audio, a stereo 44.1 kHz wav beside a silent clip.

Required: the same keys; ``input_ids``, ``attention_mask``, ``video_grid_thw``,
``video_second_per_grid``, ``feature_attention_mask`` (the audio's length) and the rope
positions equal; pixels within the route tests' tolerance; audio features within 1e-4 from a
sound file, and from an AAC track within :data:`AAC_FEATURE_BOUND` (PyAV's ffmpeg and the
system's decode AAC one 16-bit step apart on some samples; see ``test_official_routes``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from . import official

PIXEL_TOLERANCE = 1e-5
FEATURE_TOLERANCE = 1e-4
#: Largest log-mel difference of an AAC track decoded by PyAV (ffmpeg 8.1) and by the system's
#: ffmpeg (Debian's 5.1) on the route tests' clips: 4.5e-3 (docs/own-clips.md, "How close").
AAC_FEATURE_BOUND = 5e-3
QUESTION = "what do you hear"
#: The video budget per frame of the model card (128 to 768 merged patches of 28²).
BUDGET = (128 * 28 * 28, 768 * 28 * 28)
#: clip → its grid, mel frames and largest differences (written beside the route tests' report
#: when PATCHWORK_REFERENCE_REPORT names one, as ``<name>-inspect.json``).
MEASURED: dict[str, dict] = {}


@dataclass(frozen=True)
class Clip:
    width: int
    height: int
    fps: str
    seconds: float
    sound: tuple[int, int] | None = None  # AAC track (rate, channels)
    interleaved: bool = False
    separate: tuple[int, int, str] | None = None  # a sound file beside it (rate, channels, suffix)

    @property
    def name(self) -> str:
        track = f"-aac{self.sound[0]}x{self.sound[1]}" if self.sound else "-silent"
        extra = f"-{self.separate[2]}{self.separate[0]}x{self.separate[1]}" if self.separate else ""
        mode = "-interleaved" if self.interleaved else ""
        return f"{self.width}x{self.height}-{self.fps}fps-{self.seconds:g}s{track}{extra}{mode}"


CLIPS = (
    Clip(160, 120, "10", 17.0, sound=(44100, 2), interleaved=True),  # small, long, interleaved
    Clip(256, 144, "15", 24.0, separate=(44100, 2, "wav")),  # small, long, a stereo wav beside
    Clip(1280, 720, "30", 2.0, sound=(48000, 2), interleaved=True),  # 720p
    Clip(1080, 1920, "24", 1.5, sound=(44100, 1)),  # portrait 1080p, track read separately
)


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    target = os.environ.get("PATCHWORK_REFERENCE_REPORT")
    if target:
        path = Path(target).with_name(Path(target).stem + "-inspect.json")
        path.write_text(json.dumps(MEASURED, indent=1, sort_keys=True))


def test_the_clips_cover_the_acceptance() -> None:
    areas = {clip.width * clip.height for clip in CLIPS}
    outside = {area for area in areas if not BUDGET[0] <= area <= BUDGET[1]}
    assert len(outside) >= 3
    assert len({c.seconds for c in CLIPS if c.seconds > 16}) >= 2


def _tiny_published(folder: Path) -> Path:
    """Qwen2.5-Omni-7B's published thinker config with its sizes shrunk (token ids, vocabulary,
    patch and merge sizes, time scales kept), saved with random weights; beside it the published
    preprocessor config, chat template and tokenizer (:func:`official.qwen2_5_omni_folder`; its
    words include those the chat template writes, since patchwork refuses unknown tokens)."""
    from transformers import Qwen2_5OmniThinkerConfig
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration as Thinker

    official.qwen2_5_omni_folder(folder, official.WORDS + official.CHAT_WORDS)
    published = json.loads((official.FIXTURES / "qwen2_5_omni_7b.json").read_text())
    thinker = published["thinker_config"]
    thinker["text_config"].update(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        rope_scaling={"mrope_section": [2, 3, 3], "rope_type": "default", "type": "default"},
    )
    thinker["vision_config"].update(
        depth=1,
        embed_dim=32,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=32,
        fullatt_block_indexes=[0],
    )
    thinker["audio_config"].update(
        d_model=32,
        encoder_attention_heads=2,
        encoder_ffn_dim=64,
        encoder_layers=1,
        num_hidden_layers=1,
        output_dim=32,
    )
    config = Qwen2_5OmniThinkerConfig(**thinker)
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        model = Thinker(config)
    finally:
        torch.random.set_rng_state(state)
    (folder / "config.json").unlink()
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The checkpoint folder, the clips, and per clip a study over a one-row manifest: the
    clip as the study's one run (a study builds every row of its manifest when it loads, so one
    row per study keeps each inspection to its own clip)."""
    root = tmp_path_factory.mktemp("inspect-official")
    checkpoint = _tiny_published(root / "checkpoint")
    clips = root / "clips"
    clips.mkdir()
    studies = {}
    for index, clip in enumerate(CLIPS):
        official.write_mp4(
            clips / f"{clip.name}.mp4", clip.width, clip.height, clip.fps, clip.seconds, clip.sound
        )
        run: dict = {"video": f"clips/{clip.name}.mp4", "audio_in_video": clip.interleaved}
        if clip.separate is not None:
            rate, channels, suffix = clip.separate
            official.write_sound(
                clips / f"{clip.name}.{suffix}", rate, channels, clip.seconds, seed=index
            )
            run["audio"] = f"clips/{clip.name}.{suffix}"
        row = {
            "id": clip.name,
            "audio_answer": "hear",
            "visual_answer": "see",
            "runs": {"clean": run},
        }
        (root / f"{clip.name}.jsonl").write_text(json.dumps(row) + "\n")
        studies[clip.name] = root / f"{clip.name}.yaml"
        studies[clip.name].write_text(
            f"""\
name: inspect-official
model:
  family: qwen2_5_omni
  checkpoint: {checkpoint}
dataset:
  manifest: {clip.name}.jsonl
question: {QUESTION}
interventions:
  - kind: logit_lens
    run: clean
execution: {{batch_size: 1, unit_size: 1, seed: 0}}
"""
        )
    return studies


@pytest.fixture(scope="module")
def checkpoint(studies: dict[str, Path]) -> Path:
    return next(iter(studies.values())).parent / "checkpoint"


@pytest.fixture(scope="module")
def processor(checkpoint: Path):
    """The official processor, from the same checkpoint folder."""
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(checkpoint)


def _model_card(processor, clip: Clip, clips: Path) -> dict:
    """The model card's route: the conversation through the chat template, qwen-omni-utils'
    ``process_mm_info`` and the processor."""
    from qwen_omni_utils import process_mm_info

    video = str(clips / f"{clip.name}.mp4")
    content: list[dict] = []
    if clip.separate is not None:
        content.append({"type": "audio", "audio": str(clips / f"{clip.name}.{clip.separate[2]}")})
    elif clip.sound is not None and not clip.interleaved:
        content.append({"type": "audio", "audio": video})
    content += [{"type": "video", "video": video}, {"type": "text", "text": QUESTION}]
    conversation = [{"role": "user", "content": content}]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    audios, images, videos = process_mm_info(conversation, use_audio_in_video=clip.interleaved)
    kwargs = (
        {"use_audio_in_video": True, "audio_from_video_indices": [0]} if clip.interleaved else {}
    )
    return processor(
        text=text,
        audio=audios,
        images=images,
        videos=videos,
        return_tensors="pt",
        padding=True,
        **kwargs,
    )


@pytest.fixture(scope="module")
def thinker(checkpoint: Path):
    """The checkpoint's thinker on the meta device (its ``get_rope_index``)."""
    from transformers import AutoConfig
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration as Thinker

    with torch.device("meta"):
        return Thinker._from_config(AutoConfig.from_pretrained(checkpoint))


def _positions(thinker, inputs, interleaved: bool) -> torch.Tensor:
    """TMRoPE positions, as the thinker computes them."""
    positions, _ = thinker.model.get_rope_index(
        inputs["input_ids"],
        None,
        inputs["video_grid_thw"],
        inputs["attention_mask"],
        interleaved,
        inputs["feature_attention_mask"].sum(-1),
        inputs["video_second_per_grid"],
    )
    return positions


@pytest.mark.parametrize("clip", CLIPS, ids=lambda clip: clip.name)
def test_inspect_writes_the_model_cards_inputs(
    clip: Clip, studies: dict[str, Path], processor, thinker, tmp_path: Path
) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file
    from typer.testing import CliRunner

    from patchwork.cli import _register_subcommands, app

    _register_subcommands()
    study = studies[clip.name]
    result = CliRunner().invoke(
        app, ["inspect", str(study), "--sample", clip.name, "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    written = load_file(str(tmp_path / "inputs.safetensors"))
    with safe_open(str(tmp_path / "inputs.safetensors"), "pt") as opened:
        flags = json.loads(opened.metadata()["forward_flags"])
    assert flags.get("use_audio_in_video", False) == clip.interleaved
    theirs = _model_card(processor, clip, study.parent / "clips")

    assert set(written) == set(theirs)  # the processor's key names, nothing else
    assert torch.equal(written["input_ids"], theirs["input_ids"])
    assert torch.equal(written["attention_mask"].bool(), theirs["attention_mask"].bool())
    assert written["video_grid_thw"].tolist() == theirs["video_grid_thw"].tolist()
    torch.testing.assert_close(
        written["video_second_per_grid"].float(),
        torch.as_tensor(theirs["video_second_per_grid"]).float(),
        rtol=0,
        atol=1e-6,
    )
    pixels = (written["pixel_values_videos"] - theirs["pixel_values_videos"]).abs().max().item()
    assert pixels <= PIXEL_TOLERANCE, f"pixels differ by {pixels}"
    kept = theirs["feature_attention_mask"][0].bool()
    assert int(written["feature_attention_mask"].sum()) == int(kept.sum())
    ours_features = written["input_features"][0][:, written["feature_attention_mask"][0].bool()]
    features = (ours_features - theirs["input_features"][0][:, kept]).abs().max().item()
    bound = FEATURE_TOLERANCE if clip.separate is not None else AAC_FEATURE_BOUND
    assert features <= bound, f"audio features differ by {features}"
    assert torch.equal(
        _positions(thinker, written, clip.interleaved),
        _positions(thinker, theirs, clip.interleaved),
    )
    assert (tmp_path / "frames.png").is_file() and (tmp_path / "audio.png").is_file()
    MEASURED[clip.name] = {
        "video_grid_thw": written["video_grid_thw"].tolist(),
        "mel_frames": int(kept.sum()),
        "pixels": pixels,
        "features": features,
    }
