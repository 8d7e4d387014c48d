"""Toy ImageFolder generator and the ADM centre crop."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from udit.data.imagenet import build_image_dataset, center_crop_arr
from udit.data.toy import CLASS_NAMES, MANIFEST, generate_toy_data, main


def _tree_bytes(root) -> dict[str, bytes]:
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, root)] = f.read()
    return files


def test_same_seed_same_bytes_different_seed_different(tmp_path):
    for name, seed in [("a", 3), ("b", 3), ("c", 4)]:
        assert (
            main(
                [
                    "--out",
                    str(tmp_path / name),
                    "--num-classes",
                    "4",
                    "--per-class",
                    "5",
                    "--image-size",
                    "32",
                    "--seed",
                    str(seed),
                ]
            )
            == 0
        )
    a, b, c = (_tree_bytes(tmp_path / name) for name in "abc")
    assert len(a) == 4 * 5 + 1  # images + manifest
    assert a == b
    pngs = [k for k in a if k.endswith(".png")]
    assert sorted(pngs) == sorted(k for k in c if k.endswith(".png"))
    assert all(a[k] != c[k] for k in pngs)


def test_imagefolder_layout_and_labels(tmp_path):
    generate_toy_data(out=str(tmp_path), num_classes=10, per_class=3, size=32, seed=0)
    dataset = build_image_dataset(str(tmp_path), 32, flip=False)
    assert len(dataset) == 30
    assert dataset.classes == [f"{i:02d}_{name}" for i, name in enumerate(CLASS_NAMES)]
    for path, label in dataset.samples:  # sorted folder names give the generator's class order
        assert os.path.basename(os.path.dirname(path)) == f"{label:02d}_{CLASS_NAMES[label]}"
    image, label = dataset[29]
    assert label == 9 and image.shape == (3, 32, 32)
    assert -1.0 <= image.min() and image.max() <= 1.0 and image.std() > 0.1


def test_classes_differ_in_structure(tmp_path):
    # Mean edge energy per class: stripes/checker/dots are busier than single shapes.
    generate_toy_data(out=str(tmp_path), num_classes=10, per_class=4, size=32, seed=0)
    energy = {}
    for c, name in enumerate(CLASS_NAMES):
        folder = tmp_path / f"{c:02d}_{name}"
        grads = [
            np.abs(np.diff(np.asarray(Image.open(p).convert("L"), dtype=float), axis=1)).mean()
            for p in sorted(folder.iterdir())
        ]
        energy[name] = np.mean(grads)
    assert min(energy[n] for n in ("checker", "dstripes")) > max(
        energy[n] for n in ("circle", "square")
    )


def test_resume_completes_partial_folder(tmp_path):
    full, partial = tmp_path / "full", tmp_path / "partial"
    generate_toy_data(out=str(full), num_classes=3, per_class=4, size=32, seed=1)
    generate_toy_data(out=str(partial), num_classes=3, per_class=4, size=32, seed=1)
    victims = sorted(partial.glob("01_*/*.png"))[1:]
    for path in victims:
        path.unlink()
    (partial / "02_triangle" / "leftover.png.tmp").write_bytes(b"half")  # a crash mid-write
    counts = generate_toy_data(out=str(partial), num_classes=3, per_class=4, size=32, seed=1)
    assert counts == {"written": len(victims), "skipped": 12 - len(victims), "total": 12}
    partial_pngs = {k: v for k, v in _tree_bytes(partial).items() if k.endswith(".png")}
    full_pngs = {k: v for k, v in _tree_bytes(full).items() if k.endswith(".png")}
    assert partial_pngs == full_pngs


def test_other_settings_in_same_folder_are_refused(tmp_path):
    generate_toy_data(out=str(tmp_path), num_classes=2, per_class=2, size=32, seed=0)
    with pytest.raises(ValueError, match="other settings"):
        generate_toy_data(out=str(tmp_path), num_classes=2, per_class=2, size=32, seed=1)
    assert json.loads((tmp_path / MANIFEST).read_text())["seed"] == 0
    with pytest.raises(SystemExit) as exit_info:  # refused at parsing, the flag named
        main(["--out", str(tmp_path / "x"), "--num-classes", "11"])
    assert exit_info.value.code == 2 and not (tmp_path / "x").exists()


def test_center_crop_non_square_matches_reference():
    rng = np.random.default_rng(0)
    image = Image.fromarray(
        rng.integers(0, 256, size=(200, 300, 3), dtype=np.uint8)
    )  # W 300, H 200
    out = center_crop_arr(image, 64)
    assert out.size == (64, 64)
    # Reference by hand: 200 >= 128 -> box-halve to 150x100; 100 < 128 stops; bicubic to
    # short side 64 -> 96x64; centre crop x offset (96 - 64) // 2 = 16.
    ref = image.resize((150, 100), Image.BOX).resize((96, 64), Image.BICUBIC)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref)[:, 16:80])
    # A portrait image smaller than 2x: no box step, bicubic upscale, vertical crop.
    tall = Image.fromarray(rng.integers(0, 256, size=(90, 50, 3), dtype=np.uint8))
    ref = tall.resize((64, round(90 * 64 / 50)), Image.BICUBIC)  # 64 x 115
    np.testing.assert_array_equal(
        np.asarray(center_crop_arr(tall, 64)),
        np.asarray(ref)[(115 - 64) // 2 : (115 - 64) // 2 + 64],
    )
