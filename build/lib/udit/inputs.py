"""External inputs (files the user provides), checked before any GPU job starts.

The Snakefile's onstart handler calls `problems()` for the inputs the jobs about to run need
(reference batches, Inception weights, VAE, ImageNet folder): a missing or malformed one stops
the run within seconds, naming the file, its config key and where to get it, instead of an
evaluate job failing after hours of sampling. Torch-free and reads only headers (the 2 GB
reference batch is not loaded); the Inception file is hashed (95 MB, well under a second).
`udit download` (udit.download) fetches them where there is internet.
"""

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# ADM reference batches (guided-diffusion evaluations/README.md), by image size
REFERENCE_URLS = {
    256: "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet/"
    "256/VIRTUAL_imagenet256_labeled.npz",
    512: "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet/"
    "512/VIRTUAL_imagenet512.npz",
}
# What ADM's evaluator (and udit evaluate) reads from a reference batch: key -> shape check
FEATURES, SPATIAL = 2048, 2023  # pool_3 and mixed_6/conv[..., :7] at 17x17 (udit.metrics)
REFERENCE_SHAPES = {
    "mu": (FEATURES,),
    "sigma": (FEATURES, FEATURES),
    "mu_s": (SPATIAL,),
    "sigma_s": (SPATIAL, SPATIAL),
}
INCEPTION_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = (
    f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILENAME}"
)
INCEPTION_BYTES = 95_628_359  # size of the release file (torch-fidelity v0.2.0)
# torch hub convention: the name's last part is the SHA-256's first hex digits; the full
# digest is not published, so a prefix is all that can be checked
INCEPTION_SHA256_PREFIX = "6726825d"
# The one VAE weights file read: safetensors holds only tensors. The pickled .bin is never
# loaded (unpickling an untrusted file can run code), so a folder holding only it is refused.
VAE_WEIGHTS = ("diffusion_pytorch_model.safetensors",)
PICKLED_VAE_WEIGHTS = "diffusion_pytorch_model.bin"


@dataclass(frozen=True)
class Problem:
    path: str
    key: str  # the config key that names it
    what: str  # what is wrong
    source: str  # where to get it

    def __str__(self) -> str:
        return f"  {self.path} (config {self.key}): {self.what}; get it: {self.source}"


def _npy_header(zf: zipfile.ZipFile, member: str) -> tuple[tuple, np.dtype]:
    with zf.open(member) as f:
        version = np.lib.format.read_magic(f)
        read = {(1, 0): np.lib.format.read_array_header_1_0}.get(
            version, np.lib.format.read_array_header_2_0
        )
        shape, _, dtype = read(f)
    return shape, dtype


def reference_problem(path: str, *, image_size: int) -> str | None:
    """Why `path` is not an ADM reference batch at `image_size` (None: it is one)."""
    p = Path(path)
    if not p.is_file():
        return "missing"
    try:
        with zipfile.ZipFile(p) as zf:
            members = {n.removesuffix(".npy"): n for n in zf.namelist()}
            missing = [k for k in ("arr_0", *REFERENCE_SHAPES) if k not in members]
            if missing:
                return f"not an ADM reference batch: no {', '.join(missing)}"
            shape, dtype = _npy_header(zf, members["arr_0"])
            if dtype != np.uint8 or len(shape) != 4 or shape[1:] != (image_size, image_size, 3):
                return (
                    f"arr_0 is {dtype} {shape}, expected uint8 (N, {image_size}, "
                    f"{image_size}, 3) NHWC"
                )
            for key, want in REFERENCE_SHAPES.items():
                shape, _ = _npy_header(zf, members[key])
                if shape != want:
                    return f"{key} has shape {shape}, expected {want}"
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        return f"not a readable npz ({err})"
    return None


def inception_problem(path: str) -> str | None:
    p = Path(path)
    if not p.is_file():
        return "missing"
    size = p.stat().st_size
    if size != INCEPTION_BYTES:
        return f"{size} bytes, the release file has {INCEPTION_BYTES}"
    digest = hashlib.sha256(p.read_bytes()).hexdigest()
    if not digest.startswith(INCEPTION_SHA256_PREFIX):
        return f"SHA-256 {digest[:16]}... does not start with {INCEPTION_SHA256_PREFIX}"
    return None


def hub_snapshot(repo_id: str) -> Path | None:
    """The local snapshot folder of a hub repo in the Hugging Face cache (no network)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json")
    return Path(found).parent if isinstance(found, str) else None


def vae_problem(vae: str) -> str | None:
    """A diffusers AutoencoderKL folder (config.json + weights), local or in the hub cache."""
    folder = Path(vae) if Path(vae).exists() else hub_snapshot(vae) if "/" in vae else None
    if folder is None:
        return "neither a folder nor in the Hugging Face cache"
    return vae_folder_problem(folder)


def vae_folder_problem(folder: Path) -> str | None:
    """Why `folder` is not a loadable AutoencoderKL folder (None: it is one); read by both
    this pre-flight check and udit.data.vae.load_vae."""
    config = folder / "config.json"
    if not config.is_file():
        return f"no config.json in {folder}"
    try:
        kind = json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return f"{config} is not JSON ({err})"
    if not isinstance(kind, dict) or kind.get("_class_name") not in (None, "AutoencoderKL"):
        return f"{config} is not an AutoencoderKL config"
    if (folder / VAE_WEIGHTS[0]).is_file():
        return None
    if (folder / PICKLED_VAE_WEIGHTS).is_file():
        return (
            f"{folder} holds only the pickled {PICKLED_VAE_WEIGHTS}, refused as untrusted "
            f"(unpickling can run code; it was not opened); convert it to {VAE_WEIGHTS[0]} "
            f"where you trust it: AutoencoderKL.from_pretrained(DIR).save_pretrained(DIR)"
        )
    return f"no {VAE_WEIGHTS[0]} in {folder} (the weights are missing)"


def images_problem(folder: str, *, num_classes: int) -> str | None:
    p = Path(folder)
    if not p.is_dir():
        return "missing"
    classes = sum(1 for c in p.iterdir() if c.is_dir())
    if classes != num_classes:
        return f"an ImageFolder with {num_classes} class folders expected, found {classes}"
    return None


def problems(config: dict, needs: set[tuple[str, str]]) -> list[Problem]:
    """Problems of the inputs named by `needs`: {(kind, dataset)} with kind in images, vae,
    reference, inception (dataset '' for inception)."""
    datasets, out = config["datasets"], []
    for kind, name in sorted(needs):
        spec = datasets.get(name, {})
        key = f"datasets/{name}/{kind}"
        if kind == "reference" and spec.get("reference"):
            source = REFERENCE_URLS.get(spec["image_size"], "build one: udit build-reference")
            what = reference_problem(spec["reference"], image_size=spec["image_size"])
            out.append(Problem(spec["reference"], key, what, f"udit download or {source}"))
        elif kind == "images" and spec.get("source") == "folder":
            what = images_problem(spec["images"], num_classes=spec["num_classes"])
            source = "ImageNet-1k train (image-net.org), or import latents: udit import-features"
            out.append(Problem(spec["images"], key, what, source))
        elif kind == "vae" and spec.get("vae") and spec["vae"] != "tiny":
            what = vae_problem(spec["vae"])
            out.append(Problem(spec["vae"], key, what, "udit download (huggingface_hub)"))
        elif kind == "inception" and config["inception"]["weights"] != "standin":
            path = config["inception"]["weights"]
            what = inception_problem(path)
            source = f"udit download or {INCEPTION_URL}"
            out.append(Problem(path, "inception/weights", what, source))
    return [p for p in out if p.what]


def report(found: list[Problem]) -> str:
    return "external inputs missing or malformed (checked before any job starts):\n" + "\n".join(
        map(str, found)
    )
