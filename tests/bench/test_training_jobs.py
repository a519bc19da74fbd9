"""Organisms trained several at a time, each in its own process, are the organisms trained one
at a time: the weights depend on the seed and the thread count, never on the process."""

from __future__ import annotations

from pathlib import Path

from patchwork.bench import SUITE, Organism
from patchwork.bench.run import train_organisms
from patchwork.bench.suite import to_train

TINY = {"stage1_steps": 2, "stage2_steps": 2, "batch_size": 4, "variants": 2}
ORGANISMS = (
    Organism("tiny a", train={**TINY, "video_access_layers": (1, 1)}, window=(1, 1)),
    Organism("tiny b", train={**TINY, "seed": 1, "video_access_layers": (2, 3)}, window=(2, 3)),
)


def _weights(cache: Path) -> dict[str, bytes]:
    return {
        organism.slug: (cache / organism.slug / "model.safetensors").read_bytes()
        for organism in ORGANISMS
    }


def test_two_processes_train_the_same_organisms_as_one(tmp_path: Path) -> None:
    lines: list[str] = []
    train_organisms(ORGANISMS, tmp_path / "together", 2, lines.append)
    train_organisms(ORGANISMS, tmp_path / "alone", 1, lambda line: None)
    assert lines[0].startswith("training 2 organisms, 2 at a time")
    assert _weights(tmp_path / "together") == _weights(tmp_path / "alone")
    assert _weights(tmp_path / "alone")["tiny-a"] != _weights(tmp_path / "alone")["tiny-b"]
    assert to_train(ORGANISMS, tmp_path / "together") == []  # cached: nothing trains again


def test_an_audio_side_organism_needs_its_models_training_once(tmp_path: Path) -> None:
    audio = Organism("tiny audio", model_of="tiny a", window=(0, 0), swap="sound")
    assert [o.name for o in to_train((*ORGANISMS, audio), tmp_path)] == ["tiny a", "tiny b"]
    suite_audio = next(o for o in SUITE if o.name == "audio 0")  # window 1's model
    assert [o.name for o in to_train((suite_audio,), tmp_path)] == ["window 1"]
