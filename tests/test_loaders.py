"""Every file is checked where it is read, by kind (issue 19, point 2), and the data commands
keep their inputs, hold one writer and leave nothing partial (points 1, 4, 6, 7).

One loader per kind: latent caches (udit.data.shards), image files
(udit.data.imagenet.read_rgb_image), VAE folders (udit.data.vae.load_vae), Inception weights
(udit.metrics.inception). Hypothesis draws the hostile inputs of each kind; the property is
"refused with one line naming the file, the field and the value" (or read correctly), for the
loader and through a real command (`main(argv)`: exit 2, one stderr line, no traceback).
Kept small: FEW examples, no deadline, no example database written into the checkout.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image
from printed_text import check_printed, record_text
from safetensors.numpy import save_file

import udit.io
from udit import outputs
from udit.data import features, imagenet, latents, toy, vae
from udit.data import shards as shards_module
from udit.data.shards import CorruptCacheError, shard_name
from udit.errors import UserError
from udit.io import sha256_file
from udit.metrics import evaluate, inception, reference, standin
from udit.training import loop

FEW = settings()  # the suite's Hypothesis profile (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# A latent cache of IMAGES images in shards of SHARD (3 + 2), moments (8, 4, 4), CLASSES classes
CLASSES, SHARD, IMAGES, SIDE = 4, 3, 5, 4
MOMENTS = (8, SIDE, SIDE)
CACHE_IMAGE_SIZE = 32
SIZE = 16  # image side of the toy folders below


def refused(code: int, capsys, *culprits) -> str:
    """Exit 2 and ONE stderr line naming every culprit, no traceback; -> that line."""
    out, err = capsys.readouterr()
    assert code == 2, out + err
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line and "%|" not in line]  # not progress
    assert len(lines) == 1, err
    for culprit in culprits:
        assert str(culprit) in lines[0], f"{culprit!r} not named in: {lines[0]}"
    return lines[0]


def parse_error(run, capsys, flag: str) -> None:
    """An out-of-range number is refused at parsing, exit 2, naming the flag."""
    with pytest.raises(SystemExit) as exit_info:
        run()
    assert exit_info.value.code == 2
    assert f"argument {flag}: must be" in capsys.readouterr().err


# ----------------------------------------------------------------------------- latent caches


def good_shards(seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    shards = []
    for start in range(0, IMAGES, SHARD):
        n = min(SHARD, IMAGES - start)
        shards.append(
            {
                "moments": rng.standard_normal((n, 2, *MOMENTS)).astype(np.float32),
                "labels": rng.integers(0, CLASSES, n),  # int64
            }
        )
    return shards


def write_cache(root: Path, shards: list[dict[str, np.ndarray]]) -> Path:
    """A cache whose manifest says float32 MOMENTS, CLASSES classes, SHARD images per shard;
    each entry's bytes and sha256 are those of the file written, as an edit that "fixed" the
    checksum leaves them (the hostile cases C6, C7)."""
    root.mkdir(parents=True)
    entries = []
    for i, tensors in enumerate(shards):
        path = root / shard_name(i)
        save_file(tensors, str(path))
        start = i * SHARD
        entries.append(
            {
                "file": path.name,
                "start": start,
                "count": min(SHARD, IMAGES - start),
                "bytes": path.stat().st_size,
                "sha256": sha256_file(path),
            }
        )
    manifest = {
        "format_version": latents.FORMAT_VERSION,
        "vae": {"name": "tiny"},
        "image_size": CACHE_IMAGE_SIZE,
        "num_images": IMAGES,
        "classes": [f"c{i}" for i in range(CLASSES)],
        "dataset_sha256": None,
        "flips": [False, True],
        "shard_size": SHARD,
        "dtype": "float32",
        "moments_shape": list(MOMENTS),
        "latent_scale": 0.18215,
        "shards": entries,
    }
    (root / latents.MANIFEST).write_text(json.dumps(manifest))
    return root


NON_FINITE = st.sampled_from([float("nan"), float("inf"), float("-inf")])
LOGVAR_BAD = st.one_of(
    st.sampled_from([float("nan"), float("inf")]),
    st.floats(min_value=20.5, max_value=float(np.float32(3e38)), width=32),  # above 20
)


@st.composite
def corruptions(draw):
    """(shard index, kind, detail): one hostile change to one shard of good_shards()."""
    shard = draw(st.integers(0, 1))
    n = min(SHARD, IMAGES - shard * SHARD)
    kind = draw(st.sampled_from(["dtype", "shape", "label", "label_dtype", "mean", "logvar"]))
    if kind == "dtype":
        detail = draw(st.sampled_from(["float16", "float64", "int32"]))
    elif kind == "shape":
        axis = draw(st.integers(0, 4))
        size = draw(st.integers(1, 9).filter(lambda s: s != (n, 2, *MOMENTS)[axis]))
        detail = (axis, size)
    elif kind == "label":
        outside = st.one_of(
            st.sampled_from([-1, CLASSES]),  # the values next to the range, drawn often
            st.integers(-(2**63), -1),
            st.integers(CLASSES, 2**63 - 1),
        )
        detail = (draw(st.integers(0, n - 1)), draw(outside))
    elif kind == "label_dtype":
        detail = draw(st.sampled_from(["int32", "float64", "uint8"]))
    else:  # a non-finite mean or a bad logvar at a random position of a random image
        half = MOMENTS[0] // 2
        where = (
            draw(st.integers(0, n - 1)),
            draw(st.integers(0, 1)),
            draw(st.integers(0, half - 1)) + (half if kind == "logvar" else 0),
            draw(st.integers(0, SIDE - 1)),
            draw(st.integers(0, SIDE - 1)),
        )
        detail = (where, draw(LOGVAR_BAD if kind == "logvar" else NON_FINITE))
    return shard, kind, detail


SAFETENSORS_DTYPE = {"float16": "F16", "float64": "F64", "int32": "I32", "uint8": "U8"}


def corrupt(shards, shard: int, kind: str, detail) -> list[str]:
    """Apply one corruption in place; -> the words the error must hold besides the file."""
    tensors = shards[shard]
    start = shard * SHARD
    if kind == "dtype":
        tensors["moments"] = tensors["moments"].astype(detail)
        return [f"moments is {SAFETENSORS_DTYPE[detail]}", "float32"]
    if kind == "shape":
        axis, size = detail
        shape = list(tensors["moments"].shape)
        shape[axis] = size
        tensors["moments"] = np.zeros(shape, np.float32)
        return [f"moments is F32 {shape}"]
    if kind == "label":
        index, value = detail
        tensors["labels"][index] = value
        return [f"labels[{index}] = {value}", f"image {start + index} of the cache"]
    if kind == "label_dtype":
        tensors["labels"] = tensors["labels"].astype(detail)
        return [f"labels is {SAFETENSORS_DTYPE[detail]}", "I64"]
    where, value = detail
    tensors["moments"][where] = value
    image = where[0]
    return [f"moments of image {image} (image {start + image} of the cache)", f"a {kind} of"]


@FEW
@given(case=corruptions())
@example(case=(0, "dtype", "float16"))  # each kind at least once, and the bounds exactly:
@example(case=(1, "shape", (0, 3)))
@example(case=(0, "label", (2, CLASSES)))  # the first label past the last class
@example(case=(1, "label", (1, -1)))
@example(case=(0, "label_dtype", "int32"))
@example(case=(0, "mean", ((2, 1, 3, 0, 1), float("-inf"))))  # image 2: the second block
@example(case=(1, "logvar", ((1, 0, 5, 2, 3), 20.5)))
def test_a_bad_shard_is_refused_naming_shard_field_and_value(case, tmp_path_factory, monkeypatch):
    monkeypatch.setattr(shards_module, "CHECK_IMAGES", 2)  # blocks of 2: a shard spans two
    shard, kind, detail = case
    shards = good_shards()
    words = corrupt(shards, shard, kind, detail)
    cache = write_cache(tmp_path_factory.mktemp("cache") / "latents", shards)
    with pytest.raises(CorruptCacheError) as err:
        latents.LatentDataset(str(cache))
    message = str(err.value)
    assert "\n" not in message
    assert str(cache / shard_name(shard)) in message
    for word in words:
        assert word in message, f"{word!r} not in {message}"


@FEW
@given(
    labels=st.lists(st.integers(0, CLASSES - 1), min_size=IMAGES, max_size=IMAGES),
    imported=st.booleans(),
    logvar=st.floats(min_value=-30, max_value=20, width=32),
)
def test_a_good_cache_loads_every_moment_and_label(labels, imported, logvar, tmp_path_factory):
    """The checks refuse nothing valid: labels anywhere in range, logvar anywhere in
    diffusers' clamp [-30, 20], or -inf as imported features store it (std 0)."""
    shards = good_shards(seed=1)
    for i, tensors in enumerate(shards):
        tensors["labels"] = np.array(labels[i * SHARD : (i + 1) * SHARD], np.int64)
        tensors["moments"][:, :, MOMENTS[0] // 2 :] = -np.inf if imported else logvar
    cache = write_cache(tmp_path_factory.mktemp("cache") / "latents", shards)
    dataset = latents.LatentDataset(str(cache))
    assert dataset.labels.tolist() == labels
    stored = np.concatenate([s["moments"] for s in shards])
    for item in range(len(dataset)):
        moments, label = dataset[item]
        np.testing.assert_array_equal(moments.numpy(), stored[item // 2, item % 2])
        assert label == labels[item // 2]


def train_argv(tmp_path: Path, cache: Path) -> list[str]:
    return [
        "--model", "DiT-S/2", "--model-kw", "hidden_size=32", "depth=2", "num_heads=2",
        "--latents", str(cache), "--run-dir", str(tmp_path / "run"), "--total-steps", "1",
        "--image-size", str(CACHE_IMAGE_SIZE), "--num-classes", str(CLASSES),
        "--global-batch", "2", "--device", "cpu", "--num-workers", "0",
    ]  # fmt: skip


HOSTILE_CACHES = {  # the hostile-input report's cases, through `udit train`
    "C6-float16-shard": (0, "dtype", "float16"),
    "C7-wrong-shape": (1, "shape", (2, 4)),
    "C8-label-5000": (0, "label", (1, 5000)),
    "C9-label-minus-1": (1, "label", (0, -1)),
    "C10-nan-moments": (0, "mean", ((2, 1, 3, 0, 1), float("nan"))),
}


@pytest.mark.parametrize("case", HOSTILE_CACHES)
def test_train_stops_on_a_bad_cache_before_any_step(case, tmp_path, capsys):
    shard, kind, detail = HOSTILE_CACHES[case]
    shards = good_shards()
    words = corrupt(shards, shard, kind, detail)
    cache = write_cache(tmp_path / "latents", shards)
    line = refused(loop.main(train_argv(tmp_path, cache)), capsys, cache / shard_name(shard))
    assert all(word in line for word in words), line
    assert not list((tmp_path / "run").rglob("ckpt-*"))  # stopped before any step


def test_a_cache_of_more_classes_than_the_model_is_refused_naming_it(tmp_path, capsys):
    cache = write_cache(tmp_path / "latents", good_shards())
    argv = train_argv(tmp_path, cache)
    argv[argv.index("--num-classes") + 1] = str(CLASSES - 1)
    line = refused(loop.main(argv), capsys, cache)
    assert f"{cache} has {CLASSES} classes but --num-classes is {CLASSES - 1}" in line


def test_manifest_fields_are_checked_where_read(tmp_path, capsys):
    cache = write_cache(tmp_path / "latents", good_shards())
    manifest = json.loads((cache / latents.MANIFEST).read_text())
    for field, value, words in [
        ("shard_size", 0, ["field shard_size is 0"]),
        ("dtype", "bfloat16", ["field dtype is 'bfloat16'"]),
        ("classes", [], ["field classes is []"]),
        ("shards", manifest["shards"][:1], ["incomplete (1 of 2 shards"]),
    ]:
        (cache / latents.MANIFEST).write_text(json.dumps({**manifest, field: value}))
        line = refused(loop.main(train_argv(tmp_path, cache)), capsys, cache / latents.MANIFEST)
        assert all(word in line for word in words), line
    # a shard path in the manifest never reaches outside the cache folder
    escape = dict(manifest["shards"][0], file="../../outside.safetensors")
    bad = {**manifest, "shards": [escape, manifest["shards"][1]]}
    (cache / latents.MANIFEST).write_text(json.dumps(bad))
    with pytest.raises(CorruptCacheError, match=r"shards\[0\]\.file is '\.\./\.\./outside"):
        latents.LatentDataset(str(cache))


# ----------------------------------------------------------------------------- images


def gradient16() -> np.ndarray:
    """A 16-bit gray gradient over the whole range (the hostile case X4: 5..65523)."""
    return np.linspace(5, 65523, SIZE * SIZE).reshape(SIZE, SIZE).astype(np.uint16)


def as_eight_bit(levels: np.ndarray) -> np.ndarray:
    return np.rint(levels / 257).astype(np.uint8)


def toy_folder(root: Path) -> Path:
    toy.generate_toy_data(out=str(root), num_classes=2, per_class=2, size=SIZE, seed=0)
    return root


def truncated(path: Path, fmt: str) -> Path:
    """A noisy image of `fmt` cut to half its bytes (X5, X6)."""
    pixels = np.random.default_rng(0).integers(0, 256, (SIZE * 4, SIZE * 4, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


@FEW
@given(fmt=st.sampled_from(["PNG", "JPEG"]), cut=st.floats(0.0, 0.999))
def test_any_prefix_of_an_image_is_read_or_refused_naming_the_file(fmt, cut, tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / f"image.{fmt.lower()}"
    pixels = np.random.default_rng(1).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)
    data = path.read_bytes()
    path.write_bytes(data[: int(cut * len(data))])
    try:
        image = imagenet.read_rgb_image(path)
    except imagenet.UnreadableImageError as err:
        assert str(err).startswith(f"{path}: not a readable image (") and "\n" not in str(err)
    else:
        assert image.mode == "RGB" and image.size == (SIZE, SIZE)


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    """X4: convert("RGB") makes 99.8 % of this gradient white; the reader scales it."""
    levels = gradient16()
    Image.fromarray(levels).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    rgb = np.asarray(imagenet.read_rgb_image(tmp_path / "g16.png"))
    np.testing.assert_array_equal(rgb, np.repeat(as_eight_bit(levels)[..., None], 3, axis=2))


@pytest.mark.parametrize("mode, pixels", [("I", np.int32), ("F", np.float32)])
def test_modes_without_a_fixed_white_are_refused(mode, pixels, tmp_path):
    path = tmp_path / f"{mode}.tif"
    Image.fromarray(gradient16().astype(pixels)).save(path)
    assert Image.open(path).mode == mode
    with pytest.raises(imagenet.UnreadableImageError, match=f"{path}: image mode '{mode}'"):
        imagenet.read_rgb_image(path)


def test_extract_latents_and_build_reference_read_a_16_bit_png_as_its_8_bit_twin(tmp_path):
    """The two commands read images through the same function: a 16-bit PNG becomes the 8-bit
    image of the same picture, bit for bit (build-reference's crops, extract-latents' cache)."""
    folders = {}
    for name, pixels in [("sixteen", gradient16()), ("eight", as_eight_bit(gradient16()))]:
        folder = tmp_path / name / "00_class"
        folder.mkdir(parents=True)
        Image.fromarray(pixels).save(folder / "image.png")
        folders[name] = folder.parent
    crops = {
        name: reference.load_cropped(
            reference.list_images(root, num_images=None, seed=0), image_size=SIZE, num_workers=0
        )
        for name, root in folders.items()
    }
    np.testing.assert_array_equal(crops["sixteen"], crops["eight"])
    tiny = vae.save_tiny_vae(out_dir=str(tmp_path / "vae"), seed=0)
    for name, root in folders.items():
        argv = ["--images", str(root), "--out", str(tmp_path / f"lat-{name}"), "--vae", tiny]
        assert latents.main([*argv, "--image-size", str(SIZE), "--device", "cpu"]) == 0
    a, b = (latents.LatentDataset(str(tmp_path / f"lat-{n}")) for n in ("sixteen", "eight"))
    torch.testing.assert_close(a[0][0], b[0][0], rtol=0, atol=0)


@pytest.fixture
def tiny_vae(tmp_path):
    return vae.save_tiny_vae(out_dir=str(tmp_path / "vae"), seed=0)


def extract_argv(images: Path, out: Path, vae_dir: str, *extra: str) -> list[str]:
    argv = ["--images", str(images), "--out", str(out), "--vae", vae_dir]
    return [*argv, "--image-size", str(SIZE), "--device", "cpu", *extra]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("workers", ["0", "1"])
def test_extract_latents_names_a_truncated_image(fmt, workers, tmp_path, tiny_vae, capsys):
    images = toy_folder(tmp_path / "images")
    bad = truncated(images / "00_circle" / f"t.{fmt.lower()}", fmt)
    argv = extract_argv(images, tmp_path / "lat", tiny_vae, "--num-workers", workers)
    refused(latents.main(argv), capsys, bad, "not a readable image")


def test_extract_latents_names_an_image_mode_it_cannot_read(tmp_path, tiny_vae, capsys):
    images = toy_folder(tmp_path / "images")
    bad = images / "01_square" / "depth.tif"
    Image.fromarray(gradient16().astype(np.float32)).save(bad)
    line = refused(latents.main(extract_argv(images, tmp_path / "lat", tiny_vae)), capsys, bad)
    assert "image mode 'F'" in line


def reference_argv(images: Path, out: Path, weights: Path, *extra: str) -> list[str]:
    argv = ["--images", str(images), "--out", str(out), "--inception-weights", str(weights)]
    return [*argv, "--image-size", str(SIZE), "--device", "cpu", *extra]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_build_reference_names_a_truncated_image(fmt, tmp_path, capsys):
    images = toy_folder(tmp_path / "images")
    bad = truncated(images / "00_circle" / f"t.{fmt.lower()}", fmt)
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"never read: the images fail first")
    argv = reference_argv(images, tmp_path / "ref.npz", weights, "--num-workers", "1")
    refused(reference.main(argv), capsys, bad, "not a readable image")
    assert not (tmp_path / "ref.npz").exists()


# ----------------------------------------------------------------------------- VAE folders


class Payload:
    """Unpickling it creates `marker`: what a hostile pickled VAE would do (V3)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def vae_variant(base: str, folder: Path, case: str) -> Path:
    """A copy of the tiny VAE folder made hostile as the report's V1-V3 (and a config with
    more layers than the weights fill, which diffusers would leave at random init)."""
    shutil.copytree(base, folder)
    weights = folder / "diffusion_pytorch_model.safetensors"
    config = json.loads((folder / "config.json").read_text())
    if case == "V1-no-weights":
        weights.unlink()
    elif case == "V2-latent-channels":
        (folder / "config.json").write_text(json.dumps({**config, "latent_channels": 8}))
    elif case == "V2-more-layers":
        (folder / "config.json").write_text(json.dumps({**config, "layers_per_block": 2}))
    elif case == "damaged-weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif case == "V3-pickle-only":
        weights.unlink()
        torch.save({"w": Payload(folder.parent / "PWNED")}, folder / "diffusion_pytorch_model.bin")
    return folder


VAE_CASES = {
    "V1-no-weights": "no diffusion_pytorch_model.safetensors in",
    "V2-latent-channels": "config.json does not fit its weights (encoder.conv_out.weight is",
    "V2-more-layers": "config.json does not fit its weights (48 parameters missing",
    "V3-pickle-only": "holds only the pickled diffusion_pytorch_model.bin, refused as untrusted",
    "damaged-weights": "cannot be loaded (",
}


@pytest.mark.parametrize("case", VAE_CASES)
def test_a_bad_vae_folder_is_one_line_naming_it(case, tmp_path, tiny_vae, capsys):
    folder = vae_variant(tiny_vae, tmp_path / "bad-vae", case)
    with pytest.raises(vae.BadVaeError) as err:
        vae.load_vae(str(folder))
    assert VAE_CASES[case] in str(err.value) and str(folder) in str(err.value)
    images = toy_folder(tmp_path / "images")
    code = latents.main(extract_argv(images, tmp_path / "lat", str(folder)))
    line = refused(code, capsys, folder, VAE_CASES[case])
    assert "hub" not in line  # a local folder: never blamed on the hub (V1)
    assert not (tmp_path / "PWNED").exists()  # nothing was unpickled (V3)


def test_tiny_vae_same_options_noop_other_refused_overwrite_replaces(tmp_path, capsys):
    out = tmp_path / "vae"
    assert vae.main(["--out", str(out)]) == 0
    weights = (out / "diffusion_pytorch_model.safetensors").read_bytes()
    assert vae.main(["--out", str(out)]) == 0 and "already at" in capsys.readouterr().out
    refused(vae.main(["--out", str(out), "--seed", "1"]), capsys, out, "weights_sha256")
    assert (out / "diffusion_pytorch_model.safetensors").read_bytes() == weights
    assert vae.main(["--out", str(out), "--seed", "1", "--overwrite"]) == 0
    assert (out / "diffusion_pytorch_model.safetensors").read_bytes() != weights
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vae"]  # no temp or old folder left


# ----------------------------------------------------------------------------- Inception


def inception_weights(tmp_path: Path, kind: str, tiny_dit) -> Path:
    """A2: a DiT state dict; A3: torchvision's resnet18; a stand-in with one NaN."""
    if kind == "A2-dit":
        state = tiny_dit().state_dict()
    elif kind == "A3-resnet18":
        from torchvision.models import resnet18

        state = resnet18(weights=None).state_dict()
    else:
        state = standin._UninitialisedInceptionV3().state_dict()
        if kind == "one-key-missing":  # nothing unexpected, nothing resized: still refused
            del state["Mixed_7c.branch_pool.conv.weight"]
        elif kind == "a-string-value":
            state["Mixed_7c.branch_pool.conv.weight"] = "not a tensor"
        else:  # nan-weights: two of them, the message quotes the first
            state["Mixed_6d.branch1x1.conv.weight"][0, :2, 0, 0] = float("nan")
    path = tmp_path / f"{kind}.pth"
    torch.save(state, path)
    return path


INCEPTION_CASES = {
    "A2-dit": ("keys missing (Conv2d_1a_3x3.conv.weight", "unexpected keys (pos_embed"),
    "A3-resnet18": ("fc.weight is [1000, 512], InceptionV3 has [1008, 2048]", "unexpected keys"),
    "nan-weights": ("Mixed_6d.branch1x1.conv.weight holds nan",),
    "one-key-missing": ("1 of its ", " keys missing (Mixed_7c.branch_pool.conv.weight)"),
    "a-string-value": ("refused, holds a OrderedDict, not a state dict of tensors",),
}


@pytest.mark.parametrize("kind", INCEPTION_CASES)
def test_weights_of_another_network_are_one_line_naming_the_file(kind, tmp_path, tiny_dit):
    weights = inception_weights(tmp_path, kind, tiny_dit)
    wrong = (inception.WrongWeightsError, inception.UnsafeWeightsError)
    with pytest.raises(wrong) as err:
        inception.load_extractor(weights=weights)
    message = str(err.value)
    assert message.startswith(f"Inception weights {weights}: ") and "\n" not in message
    assert all(words in message for words in INCEPTION_CASES[kind]), message
    assert message.count("Mixed_") <= inception.KEYS_SHOWN + 1  # a few names, not hundreds


def test_a_reference_subset_takes_any_count_from_one_to_all(tmp_path):
    """--num-images N picks N distinct images, seeded, for every N from 1 to the folder's
    count; 0 and one past the count are refused."""
    images = toy_folder(tmp_path / "images")
    every = reference.list_images(images, num_images=None, seed=0)
    for n in (1, len(every)):
        chosen = reference.list_images(images, num_images=n, seed=3)
        assert len(set(chosen)) == n and set(chosen) <= set(every)
        assert chosen == reference.list_images(images, num_images=n, seed=3)
    for n in (0, len(every) + 1):
        with pytest.raises(UserError, match=f"--num-images {n}: folder "):
            reference.list_images(images, num_images=n, seed=3)


def write_npz_pair(tmp_path: Path) -> tuple[Path, Path]:
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    stats = {"mu": np.zeros(3), "sigma": np.eye(3), "mu_s": np.zeros(3), "sigma_s": np.eye(3)}
    np.savez(tmp_path / "ref.npz", arr_0=images, **stats)
    np.savez(tmp_path / "s.npz", arr_0=images, arr_1=np.zeros(4, np.int64))
    return tmp_path / "s.npz", tmp_path / "ref.npz"


def test_evaluate_and_build_reference_refuse_a_dit_and_a_resnet(tmp_path, tiny_dit, capsys):
    samples, ref = write_npz_pair(tmp_path)
    dit = inception_weights(tmp_path, "A2-dit", tiny_dit)
    argv = ["--samples", str(samples), "--reference", str(ref), "--out", str(tmp_path / "m.json")]
    code = evaluate.main([*argv, "--inception-weights", str(dit), "--device", "cpu"])
    refused(code, capsys, dit, "not a state dict of the FID InceptionV3")
    resnet = inception_weights(tmp_path, "A3-resnet18", tiny_dit)
    images = toy_folder(tmp_path / "images")
    code = reference.main(reference_argv(images, tmp_path / "new.npz", resnet))
    refused(code, capsys, resnet, "fc.weight is [1000, 512]")
    assert not (tmp_path / "m.json").exists() and not (tmp_path / "new.npz").exists()


# ----------------------------------------------------------------------------- outputs


@pytest.fixture
def standin_weights(tmp_path) -> Path:
    """Inception-shaped weights (PyTorch's default init): enough to run build-reference."""
    path = tmp_path / "inception.pth"
    torch.save(standin._UninitialisedInceptionV3().state_dict(), path)
    return path


REFERENCE_VARIES = {  # machine, time and file-bytes dependent
    "options.images_sha256",
    "provenance.versions.*",
    "provenance.device",
    "provenance.inception_weights.sha256",
    "provenance.git_commit",
    "provenance.time_utc",
}


def test_build_reference_keeps_its_inputs_and_other_results(tmp_path, standin_weights, capsys):
    images = toy_folder(tmp_path / "images")
    out = tmp_path / "ref.npz"
    before = standin_weights.read_bytes()
    code = reference.main(reference_argv(images, standin_weights, standin_weights))
    refused(code, capsys, "--out", "is the input --inception-weights")
    refused(reference.main(reference_argv(images, images, standin_weights)), capsys, "--images")
    assert standin_weights.read_bytes() == before
    first = reference_argv(images, out, standin_weights, "--num-images", "2", "--seed", "0")
    capsys.readouterr()
    assert reference.main(first) == 0
    said = f"wrote {out}: 2 images at {SIZE}px, Inception weights UNCALIBRATED (not the official"
    assert capsys.readouterr().out.splitlines()[-1] == said + " weights)"
    built = out.read_bytes()
    with np.load(out) as ref:  # what the npz says of how it was built, key by key
        record = json.loads(str(ref["provenance_json"]))
    check_printed(record_text(record, varies=REFERENCE_VARIES), "records/reference.json")
    assert reference.main(first) == 0 and "nothing to do" in capsys.readouterr().out
    other = reference_argv(images, out, standin_weights, "--num-images", "2", "--seed", "1")
    refused(reference.main(other), capsys, out, "other options", "seed 0 -> 1")
    assert out.read_bytes() == built
    every = reference_argv(images, tmp_path / "all.npz", standin_weights)
    assert reference.main(every) == 0
    last = max(images.rglob("*.png"))  # renamed, same bytes, still listed last
    last.rename(last.with_name(f"~{last.name}"))
    refused(reference.main(every), capsys, "all.npz", "other options", "images_sha256")
    np.savez(tmp_path / "adm.npz", arr_0=np.zeros((1, SIZE, SIZE, 3), np.uint8))
    adm = reference_argv(images, tmp_path / "adm.npz", standin_weights)
    refused(reference.main(adm), capsys, "adm.npz", "not a result of this command")


def test_extract_latents_out_never_an_input(tmp_path, tiny_vae, capsys):
    images = toy_folder(tmp_path / "images")
    cases = [
        (images, "is the input --images"),
        (images / "cache", "inside the input folder --images"),
        (Path(tiny_vae), "is the input --vae"),
        (tmp_path, "holds the input --images"),
    ]
    for out, words in cases:
        refused(latents.main(extract_argv(images, out, tiny_vae)), capsys, "--out", words)
    assert not (images / "cache").exists()


def test_import_features_and_toy_data_outputs_never_an_input(tmp_path, capsys):
    feats = tmp_path / "feat"
    (feats / "x_features").mkdir(parents=True)
    (feats / "x_labels").mkdir()
    code = features.main(["--features", str(feats), "--out", str(feats / "x_labels")])
    refused(code, capsys, "--out", "inside the input folder --features")
    taken = tmp_path / "notes.txt"
    taken.write_text("someone's file")
    refused(toy.main(["--out", str(taken), "--per-class", "1"]), capsys, taken, "is a file")
    assert taken.read_text() == "someone's file"


def test_standin_never_replaces_other_weights_unless_overwrite(tmp_path, capsys):
    images = toy_folder(tmp_path / "images")
    out = tmp_path / "official.pth"
    out.write_bytes(b"the official weights stand here")
    argv = ["--out", str(out), "--seed", "0", "--calibration-images", str(images)]
    argv += ["--num-calibration", "2", "--image-size", str(SIZE)]
    refused(standin.main(argv), capsys, out, "--overwrite")
    assert out.read_bytes() == b"the official weights stand here"
    assert standin.main([*argv, "--overwrite"]) == 0
    assert standin.main(argv) == 0 and "nothing to do" in capsys.readouterr().out


def locked_commands(tmp_path: Path, tiny_vae: str) -> dict:
    """Each data command with valid arguments, and the output path it locks."""
    images = toy_folder(tmp_path / "images")
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"not read: the lock is taken first")
    feats = tmp_path / "feat"
    for sub in ("imagenet32_features", "imagenet32_labels"):
        (feats / sub).mkdir(parents=True)
    for name in ("0_0.npy", "0_1.npy"):
        np.save(feats / "imagenet32_features" / name, np.zeros((1, 4, 4, 4), np.float32))
        np.save(feats / "imagenet32_labels" / name, np.array([0]))
    lat, toy_out, imp = tmp_path / "lat", tmp_path / "toy", tmp_path / "imp"
    ref, pth, vae_out = tmp_path / "ref.npz", tmp_path / "standin.pth", tmp_path / "vae2"
    standin_argv = ["--out", str(pth), "--seed", "0", "--calibration-images", str(images)]
    return {
        "extract-latents": (lambda: latents.main(extract_argv(images, lat, tiny_vae)), lat),
        "import-features": (
            lambda: features.main(["--features", str(feats), "--out", str(imp)]),
            imp,
        ),
        "toy-data": (lambda: toy.main(["--out", str(toy_out), "--per-class", "1"]), toy_out),
        "build-reference": (lambda: reference.main(reference_argv(images, ref, weights)), ref),
        "make-standin-inception": (lambda: standin.main(standin_argv), pth),
        "tiny-vae": (lambda: vae.main(["--out", str(vae_out)]), vae_out),
    }


@pytest.mark.parametrize(
    "command",
    [
        "extract-latents",
        "import-features",
        "toy-data",
        "build-reference",
        "make-standin-inception",
        "tiny-vae",
    ],
)
def test_a_second_writer_is_refused_at_once(command, tmp_path, tiny_vae, capsys):
    run, out = locked_commands(tmp_path, tiny_vae)[command]
    if command in ("extract-latents", "import-features", "toy-data"):
        out.mkdir()  # a folder output is locked inside itself
    capsys.readouterr()
    with outputs.locked(out, flag="--out"):  # the first writer, alive
        refused(run(), capsys, out, "is being written by PID")


class HalfWritten:
    """An image whose save is interrupted (Ctrl-C) after half a file is on disk."""

    def save(self, path, format):
        Path(path).write_bytes(b"\x89PNG\r\n\x1a\n half")
        raise KeyboardInterrupt


def torn_write(path, data, **kwargs):
    """udit.io.atomic_write_bytes interrupted after half the bytes."""
    with udit.io.atomic_open(path, "wb") as f:
        f.write(data[: len(data) // 2])
        raise KeyboardInterrupt


def half_save(self, folder, *args, **kwargs):
    (Path(folder) / "config.json").write_text("{")
    raise KeyboardInterrupt


def test_ctrl_c_leaves_no_partial_file(tmp_path, tiny_vae, monkeypatch):
    """Ctrl-C mid-write: exit 130, no temp file or folder left; a re-run completes."""
    out = tmp_path / "toy"
    with monkeypatch.context() as patch:
        patch.setattr(toy, "make_image", lambda **kw: HalfWritten())
        assert toy.main(["--out", str(out), "--per-class", "2", "--num-classes", "2"]) == 130
    assert [p.name for p in out.rglob("*") if p.is_file()] == [toy.MANIFEST]
    images, lat = toy_folder(tmp_path / "images"), tmp_path / "lat"
    argv = extract_argv(images, lat, tiny_vae, "--shard-size", "2")
    with monkeypatch.context() as patch:
        patch.setattr(latents, "atomic_write_bytes", torn_write)
        assert latents.main(argv) == 130
    assert list(lat.iterdir()) == []  # no shard, no temp file, no lock
    assert latents.main(argv) == 0 and len(latents.LatentDataset(str(lat))) == 8
    from diffusers import AutoencoderKL

    with monkeypatch.context() as patch:
        patch.setattr(AutoencoderKL, "save_pretrained", half_save)
        assert vae.main(["--out", str(tmp_path / "vout")]) == 130
    assert not [p for p in tmp_path.iterdir() if "vout" in p.name and "lock" not in p.name]


# ----------------------------------------------------------------------------- numbers, labels


@pytest.mark.parametrize(
    "command, argv, flag",
    [
        (latents.main, ["--images", "i", "--out", "o", "--batch-size", "0"], "--batch-size"),
        (latents.main, ["--images", "i", "--out", "o", "--num-workers", "-1"], "--num-workers"),
        (features.main, ["--features", "f", "--out", "o", "--shard-size", "0"], "--shard-size"),
        (features.main, ["--features", "f", "--out", "o", "--num-classes", "0"], "--num-classes"),
        (reference.main, ["--images", "i", "--out", "o", "--image-size", "0"], "--image-size"),
        (toy.main, ["--out", "o", "--per-class", "0"], "--per-class"),
        (toy.main, ["--out", "o", "--image-size", "100000"], "--image-size"),
        (vae.main, ["--out", "o", "--latent-channels", "0"], "--latent-channels"),
        (standin.main, ["--out", "o", "--seed", "-1", "--calibration-images", "i"], "--seed"),
    ],
)
def test_numbers_out_of_range_fail_at_parsing(command, argv, flag, capsys):
    parse_error(lambda: command(argv), capsys, flag)


@FEW
@given(labels=st.lists(st.integers(-3, CLASSES + 3), min_size=3, max_size=3))
def test_import_features_labels_in_range_or_refused_naming_the_file(
    labels, tmp_path_factory, capsys
):
    root = tmp_path_factory.mktemp("feat")
    (root / "feat" / "x_features").mkdir(parents=True)
    (root / "feat" / "x_labels").mkdir()
    for i, label in enumerate(labels):
        np.save(root / "feat" / "x_features" / f"{i}_0.npy", np.ones((1, 4, 4, 4), np.float32))
        np.save(root / "feat" / "x_labels" / f"{i}_0.npy", np.array([label]))
    argv = ["--features", str(root / "feat"), "--out", str(root / "lat"), "--image-size", "32"]
    capsys.readouterr()
    code = features.main([*argv, "--num-classes", str(CLASSES), "--keep-last"])
    bad = [i for i, label in enumerate(labels) if not 0 <= label < CLASSES]
    if not bad:
        assert code == 0
        assert latents.LatentDataset(str(root / "lat")).labels.tolist() == labels
        return
    label_file = root / "feat" / "x_labels" / f"{bad[0]}_0.npy"
    refused(code, capsys, label_file, f"label {labels[bad[0]]} is outside [0, {CLASSES})")


def test_a_latent_run_folder_still_refuses_other_trajectory_options(tmp_path, capsys):
    """With --latents the cache fixes the VAE, so --vae is left out of the run's identity, and
    only it: a re-run with another seed is refused like any run's."""
    cache = write_cache(tmp_path / "latents", good_shards())
    assert loop.main(train_argv(tmp_path, cache)) == 0  # one step, checkpointed at the end
    capsys.readouterr()
    line = refused(loop.main([*train_argv(tmp_path, cache), "--seed", "5"]), capsys, "seed: 0 -> 5")
    assert "holds a run with different options" in line
