"""load_checkpoint: every layout we meet (released, train.py, DDP, paths) and clear failures."""

import argparse

import pytest
import torch

from udit.models import load_checkpoint
from udit.models.dit import DiT
from udit.models.weights import CheckpointError


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def layouts(state: dict) -> dict:
    return {
        "raw (released DiT-XL-2-256x256.pt)": (state, "ema"),
        "train.py ema": ({"ema": state, "opt": {}, "args": None}, "ema"),
        "train.py model": ({"model": state, "ema": {}, "opt": {}}, "model"),
        "DDP prefix": ({f"module.{k}": v for k, v in state.items()}, "ema"),
    }


@pytest.mark.parametrize("layout", list(layouts({})))
def test_loads_every_layout_strictly(layout, tiny_dit):
    source, target = tiny_dit(seed=1), tiny_dit(seed=2)
    checkpoint, key = layouts(source.state_dict())[layout]
    assert load_checkpoint(target, checkpoint, key=key) is target
    assert_same_weights(source, target)


def test_official_train_checkpoint_from_path(tmp_path, tiny_dit):
    ema, raw, target = tiny_dit(seed=1), tiny_dit(seed=3), tiny_dit(seed=2)
    path = tmp_path / "0400000.pt"
    opt = torch.optim.AdamW(raw.parameters(), lr=1e-4)
    # official DiT / U-DiT train.py layout, "args" an argparse.Namespace
    torch.save(
        {
            "model": raw.state_dict(),
            "ema": ema.state_dict(),
            "opt": opt.state_dict(),
            "args": argparse.Namespace(model="DiT-S/2", global_batch_size=256),
        },
        path,
    )
    load_checkpoint(target, path)  # default key: ema, what the papers sample
    assert_same_weights(ema, target)
    load_checkpoint(target, str(path), key="model")
    assert_same_weights(raw, target)


def test_missing_file_names_path_and_official_sources(tmp_path, tiny_dit):
    missing = tmp_path / "DiT-XL-2-256x256.pt"
    with pytest.raises(FileNotFoundError) as err:
        load_checkpoint(tiny_dit(seed=0), missing)
    assert str(missing) in str(err.value)
    assert "https://dl.fbaipublicfiles.com/DiT/models/DiT-XL-2-256x256.pt" in str(err.value)
    assert "YuchuanTian/U-DiT" in str(err.value)


def test_missing_and_unexpected_keys_are_listed(tiny_dit):
    state = tiny_dit(seed=1).state_dict()
    del state["blocks.1.mlp.fc2.weight"]
    state["blocks.5.attn.qkv.weight"] = torch.zeros(1)
    target = tiny_dit(seed=2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(target, state)
    msg = str(err.value)
    assert "1 missing keys: blocks.1.mlp.fc2.weight" in msg
    assert "1 unexpected keys: blocks.5.attn.qkv.weight" in msg
    assert "official layout" in msg
    for k, v in target.state_dict().items():  # nothing half-loaded
        assert torch.equal(before[k], v)


@pytest.mark.parametrize("dropped", [7, 8, 9, 20])
def test_a_long_list_of_missing_keys_is_cut_after_eight(tiny_dit, dropped):
    """The error names the first 8 offending keys in the model's order, then how many more."""
    state = tiny_dit(seed=1).state_dict()
    gone = list(state)[:dropped]
    for key in gone:
        del state[key]
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tiny_dit(seed=2), state)
    more = f" ... and {dropped - 8} more" if dropped > 8 else ""
    listed = f"{dropped} missing keys: {', '.join(gone[:8])}{more}. The model expects"
    assert listed in str(err.value)


def test_shape_mismatch_fails_even_when_not_strict(tiny_dit):
    state = tiny_dit(seed=0, hidden_size=64).state_dict()
    with pytest.raises(
        CheckpointError,
        match=r"shape mismatches: pos_embed: checkpoint \(1, 16, 64\) vs model \(1, 16, 32\)",
    ):
        load_checkpoint(tiny_dit(seed=0, hidden_size=32), state, strict=False)


def test_non_strict_loads_the_matching_keys(tiny_dit):
    source, target = tiny_dit(seed=1), tiny_dit(seed=2)
    state = source.state_dict()
    kept = target.final_layer.linear.weight.clone()
    del state["final_layer.linear.weight"]
    load_checkpoint(target, state, strict=False)
    assert torch.equal(target.final_layer.linear.weight, kept)
    assert torch.equal(target.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)


def test_wrong_key_and_non_state_dict_are_explained(tiny_dit):
    with pytest.raises(CheckpointError, match=r"no state dict under 'ema'.*try key='model'"):
        load_checkpoint(tiny_dit(seed=0), {"model": tiny_dit(seed=0).state_dict(), "steps": 5})
    with pytest.raises(CheckpointError, match="expected a state dict"):
        load_checkpoint(tiny_dit(seed=0), [1, 2, 3])
    # neither 'ema' nor 'model': the keys are listed, no key is suggested
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tiny_dit(seed=0), {"steps": 5, "args": "x"})
    assert str(err.value) == (
        "checkpoint has no state dict under 'ema' and is not a plain state dict; "
        "top-level keys: ['args', 'steps']"
    )


class Untrusted:  # pickled by reference: weights_only loading must refuse it
    pass


def test_arbitrary_pickles_are_refused_by_default(tmp_path, tiny_dit):
    path = tmp_path / "odd.pt"
    model = tiny_dit(seed=1)
    torch.save({"ema": model.state_dict(), "extra": Untrusted()}, path)
    with pytest.raises(CheckpointError, match="weights_only=False"):
        load_checkpoint(tiny_dit(seed=0), path)
    target = tiny_dit(seed=2)
    load_checkpoint(target, path, weights_only=False)
    assert_same_weights(model, target)


class RenamingDiT(DiT):
    """A model whose official checkpoints use other names (as the U-shaped family may)."""

    def convert_official_state_dict(self, state):
        return {k.replace("legacy_blocks.", "blocks."): v for k, v in state.items()}


def test_convert_official_state_dict_hook_runs_first(tiny_dit):
    source = tiny_dit(seed=1)
    state = {k.replace("blocks.", "legacy_blocks."): v for k, v in source.state_dict().items()}
    torch.manual_seed(2)
    target = RenamingDiT(
        input_size=8, patch_size=2, hidden_size=32, depth=2, num_heads=4, num_classes=10
    )
    load_checkpoint(target, state)
    assert_same_weights(source, target)
    with pytest.raises(CheckpointError, match="missing keys"):
        load_checkpoint(tiny_dit(seed=0), state)  # without the hook the names do not match
