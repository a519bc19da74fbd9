"""The Qwen2.5-Omni adapter: position groups, silent-trap checks, the full model's thinker."""

from __future__ import annotations

import pytest
import torch

from patchwork import ModelError
from patchwork.loading.generators import random_sample
from patchwork.loading.model import RANDOM_SPECIALS, load_model
from patchwork.models.qwen2_5_omni import Qwen25OmniAdapter, audio_token_count
from patchwork.study.schema import RunSpec
from patchwork.study.specs import ModelSpec, RandomInit

RUNS = {"clean": RunSpec(picture="blank"), "conflict": RunSpec(picture="other_category")}


@pytest.fixture(scope="module")
def loaded():
    return load_model(
        ModelSpec(random_init=RandomInit(layers=2, hidden_size=32, heads=2, kv_heads=1))
    )


def test_position_groups_follow_the_token_ids(loaded) -> None:
    sample = random_sample(0, 0, RUNS, "what do you hear", loaded)
    ids = sample.runs["conflict"]["input_ids"]
    groups = loaded.adapter.position_groups(ids)
    assert torch.equal(groups["audio"], ids[0] == RANDOM_SPECIALS["audio"])
    assert torch.equal(groups["video"], ids[0] == RANDOM_SPECIALS["video"])
    assert int(groups["audio"].sum()) == audio_token_count(40) == 10
    assert int(groups["video"].sum()) == 4
    assert not groups["image"].any()
    assert groups["answer"].nonzero().flatten().tolist() == [ids.shape[1] - 1]
    partition = groups["audio"].int() + groups["video"] + groups["text"] + groups["answer"]
    assert (partition == 1).all() and groups["all"].all()


def test_a_missing_audio_placeholder_is_refused(loaded) -> None:
    run = dict(random_sample(0, 0, RUNS, "what do you hear", loaded).runs["conflict"])
    ids = run["input_ids"].clone()
    first_audio = int((ids[0] == RANDOM_SPECIALS["audio"]).nonzero()[0])
    run["input_ids"] = torch.cat([ids[:, :first_audio], ids[:, first_audio + 1 :]], dim=1)
    run["attention_mask"] = torch.ones_like(run["input_ids"])
    with pytest.raises(
        ModelError, match="9 audio placeholder tokens but the audio features need 10"
    ):
        loaded.adapter.check_inputs(run, "sample s0")


def test_a_missing_attention_mask_is_refused(loaded) -> None:
    run = dict(random_sample(0, 0, RUNS, "what do you hear", loaded).runs["conflict"])
    del run["attention_mask"]
    with pytest.raises(ModelError, match="attention_mask is required"):
        loaded.adapter.check_inputs(run, "sample s0")


def test_the_full_omni_model_is_traced_through_its_thinker(loaded) -> None:
    class FullModel(torch.nn.Module):
        def __init__(self, thinker: torch.nn.Module) -> None:
            super().__init__()
            self.thinker = thinker

    adapter = Qwen25OmniAdapter(FullModel(loaded.model))
    assert adapter.root is loaded.model
    assert adapter.num_layers == 2


def test_a_missing_checkpoint_directory_is_named(tmp_path) -> None:
    spec = ModelSpec(checkpoint=str(tmp_path / "nowhere"))
    with pytest.raises(ModelError, match="no checkpoint directory at .*nowhere"):
        load_model(spec)


def test_pickled_weights_are_refused(tmp_path) -> None:
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ModelError, match="no \\*.safetensors weights"):
        load_model(ModelSpec(checkpoint=str(tmp_path)))


def test_local_checkpoints_of_full_model_and_thinker_load_the_same_thinker(
    loaded, tmp_path
) -> None:
    import numpy as np

    from patchwork import open_results, parse_study, run_study

    from .helpers import study_text, tiny_full_omni

    torch.manual_seed(5)
    full = tiny_full_omni(loaded.model.config).eval()
    full.save_pretrained(tmp_path / "full")
    full.thinker.save_pretrained(tmp_path / "thinker")
    stores = {}
    for name in ("full", "thinker"):
        text = study_text(layers=2).replace(
            "  random_init: {layers: 2, hidden_size: 32, heads: 2, kv_heads: 1, seed: 1}",
            f"  checkpoint: {tmp_path / name}",
        )
        stores[name] = open_results(run_study(parse_study(text), tmp_path / "stores" / name).store)
        assert loaded_thinker_matches(tmp_path / name, full.thinker)
    effect = {name: store["effect"].values for name, store in stores.items()}
    assert np.isfinite(effect["full"]).all()
    np.testing.assert_array_equal(effect["full"], effect["thinker"])


def loaded_thinker_matches(path, thinker) -> bool:
    reloaded = load_model(ModelSpec(checkpoint=str(path))).model
    expected = dict(thinker.state_dict())
    return all(torch.equal(value, expected[key]) for key, value in reloaded.state_dict().items())
