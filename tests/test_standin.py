"""`udit make-standin-inception`: determinism, the real weights-path load, bad input, crop.

The calibration forward is a full Inception pass (~6 GFLOPs per image at 299x299), so the
batches here hold 2-4 tiny images; the ~96 MB file is written under tmp_path only.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from udit.data.imagenet import center_crop_arr
from udit.metrics import inception, provenance, standin
from udit.metrics.npz import ArrayImages

SIZE = 16  # Inception resizes to 299 anyway; tiny files keep the folder cheap
NUM_CALIBRATION = 4


def write_image_folder(root, *, n: int, seed: int, size: tuple[int, int] = (SIZE, SIZE)):
    """ImageFolder with two classes of random-colour images; returns the images (H, W, 3)."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        folder = root / f"class_{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = rng.uniform(0, 255, (4, 4, 3)).astype(np.uint8)
        image = Image.fromarray(coarse).resize(size, resample=Image.BILINEAR)
        image.save(folder / f"{i:03d}.png")
        images.append(np.asarray(image))
    return images


@pytest.fixture(scope="module")
def calibration(tmp_path_factory) -> torch.Tensor:
    root = tmp_path_factory.mktemp("calibration")
    write_image_folder(root, n=8, seed=0)
    return standin.load_calibration_images(root, num_images=2, image_size=SIZE, seed=0)


def test_same_seed_same_tensors_other_seed_differs(calibration):
    first, std_first = standin.standin_state_dict(calibration=calibration, seed=3)
    again, std_again = standin.standin_state_dict(calibration=calibration, seed=3)
    other, _ = standin.standin_state_dict(calibration=calibration, seed=4)
    assert first.keys() == again.keys() == other.keys()
    for key in first:
        assert torch.equal(first[key], again[key]), key
    assert std_first == std_again > standin.MIN_POOL_STD
    conv = "Mixed_6d.branch1x1.conv.weight"
    assert not torch.equal(first[conv], other[conv])
    # BatchNorm statistics were measured, not left at PyTorch's 0 / 1
    bn_mean = first["Conv2d_1a_3x3.bn.running_mean"]
    assert bn_mean.abs().max() > 0 and not torch.equal(
        first["Mixed_7c.branch_pool.bn.running_var"],
        torch.ones_like(first["Mixed_7c.branch_pool.bn.running_var"]),
    )


def test_calibration_images_use_adm_centre_crop(tmp_path):
    originals = write_image_folder(tmp_path, n=3, seed=1, size=(40, 24))  # landscape, W x H
    batch = standin.load_calibration_images(tmp_path, num_images=3, image_size=SIZE, seed=0)
    assert batch.shape == (3, 3, SIZE, SIZE) and batch.dtype == torch.uint8
    # ImageFolder order: class_0 (images 0, 2), then class_1 (image 1)
    for row, index in enumerate([0, 2, 1]):
        expected = np.asarray(center_crop_arr(Image.fromarray(originals[index]), SIZE))
        np.testing.assert_array_equal(batch[row].permute(1, 2, 0).numpy(), expected)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"folder": "missing"}, "not a directory"),
        ({"folder": "empty"}, "not an ImageFolder"),
        ({"num": 99}, "holds only 6 images"),
        ({"num": 1}, "argument --num-calibration: must be an integer in [2, 256], got 1"),
        ({"size": 0}, "argument --image-size: must be an integer in [1, 4096], got 0"),
    ],
)
def test_cli_bad_input_exits_2_naming_the_problem(tmp_path, capsys, change, message):
    write_image_folder(tmp_path / "images", n=6, seed=2)
    (tmp_path / "empty").mkdir()
    out = tmp_path / "w.pth"
    argv = [
        "--out",
        str(out),
        "--seed",
        "0",
        "--calibration-images",
        str(tmp_path / change.get("folder", "images")),
        "--num-calibration",
        str(change.get("num", 2)),
        "--image-size",
        str(change.get("size", SIZE)),
    ]
    with pytest.raises(SystemExit) as exit_info:
        standin.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow  # two calibrations + two 96 MB writes + one extraction: ~19 s on 2 shared cores
def test_cli_writes_byte_identical_file_that_loads_through_weights_path(tmp_path, capsys):
    images = write_image_folder(tmp_path / "images", n=6, seed=3)
    outs = [tmp_path / "a" / "standin.pth", tmp_path / "b" / "standin.pth"]
    for out in outs:
        argv = ["--out", str(out), "--seed", "7", "--calibration-images", str(tmp_path / "images")]
        argv += ["--num-calibration", str(NUM_CALIBRATION), "--image-size", str(SIZE)]
        assert standin.main(argv) == 0
    log = capsys.readouterr().out
    assert "STAND-IN" in log and "uncalibrated" in log
    assert outs[0].read_bytes() == outs[1].read_bytes()
    assert not list(outs[0].parent.glob(".standin.pth.*"))  # atomic write left no temp file
    assert outs[0].stat().st_mode & 0o777 == standin.WEIGHTS_MODE
    sha = provenance.sha256_file(outs[0])
    assert not provenance.is_official_weights(sha)  # so `udit evaluate` flags it uncalibrated

    # the metrics' own loader: torch-fidelity's strict load_state_dict (keys and shapes)
    extractor = inception.load_extractor(weights=inception.resolve_weights(outs[0]))
    batch = np.stack(images[:2])  # (2, SIZE, SIZE, 3)
    feats = inception.extract_features(ArrayImages(batch), extractor=extractor, batch_size=2)
    assert feats[inception.POOL].shape == (2, 2048)
    assert feats[inception.POOL].std() > 1e-2  # PyTorch's default init gives ~1e-8
    assert np.isfinite(feats[inception.LOGITS]).all()


def test_standin_draws_kaiming_convs_and_a_small_logits_layer(calibration):
    """The stand-in's random weights by their spread (6 standard errors of a sample std, n
    values: sqrt(1/2n) relative): Kaiming-normal convs (std sqrt(2 / fan_in)), logits weights
    with std FC_IN^-1/2 (so logits have unit scale) and a zero bias."""
    state, _ = standin.standin_state_dict(calibration=calibration, seed=3)
    fc = state["fc.weight"]  # (1008, 2048)
    conv = state["Mixed_6d.branch1x1.conv.weight"]  # (192, 768, 1, 1)
    for w, std in ((fc, standin.FC_IN**-0.5), (conv, (2 / conv[0].numel()) ** 0.5)):
        assert abs(w.std().item() / std - 1) < 6 * (1 / (2 * w.numel())) ** 0.5, w.shape
        assert abs(w.mean().item()) < 6 * std / w.numel() ** 0.5
    assert fc.shape == (1008, standin.FC_IN) and not state["fc.bias"].any()


def test_too_few_calibration_images_are_refused(tmp_path):
    write_image_folder(tmp_path, n=4, seed=0)
    with pytest.raises(ValueError) as err:
        standin.load_calibration_images(tmp_path, num_images=1, image_size=SIZE, seed=0)
    assert str(err.value) == "--num-calibration 1: needs at least 2"
