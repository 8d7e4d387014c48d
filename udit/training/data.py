"""Training data sources: a latent cache, images encoded online by the VAE, or pixels.

Image flips and latent draws use the trainer's per-sample generators (udit.training.determinism),
so the batch a rank sees does not depend on the rank count or the DataLoader workers.
"""

import torch

from udit.errors import BadValueError

FLIP_PROB = 0.5  # random horizontal flip of image inputs, as DiT's RandomHorizontalFlip()


def build_train_data(
    *,
    latents: str | None,
    images: str | None,
    pixel: bool,
    vae: str,
    image_size: int,
    num_classes: int,
    device: torch.device,
):
    """-> (dataset, kind, shape (C, H, W) the model sees, prepare(x, draws) -> model input).

    kind 'latents': cached VAE moments, a fresh z ~ N(mean, var) per step (per-sample noise);
    'vae': images encoded online; 'pixels': images as they are (toy runs, no VAE). Image
    flips use the per-sample coin, not the dataset's transform, so they do not depend on
    the rank or DataLoader worker (the latent cache stores both flips as separate items).
    """
    # Each source imports its own: a latent cache needs neither torchvision nor diffusers (~5 s).
    if latents is not None:
        return _latent_data(latents, image_size=image_size, num_classes=num_classes, device=device)
    return _image_data(
        images, pixel=pixel, vae=vae, image_size=image_size, num_classes=num_classes, device=device
    )


def _latent_data(latents: str, *, image_size: int, num_classes: int, device: torch.device):
    """A latent cache: a fresh z ~ N(mean, var) per step from the stored moments."""
    from udit.data.latents import LatentDataset, sample_latent

    # every shard is checked here, before any step: dtype and shape against the manifest,
    # labels in [0, its classes), finite moments (udit.data.shards); one line names the file
    dataset = LatentDataset(latents)
    if dataset.image_size != image_size:
        raise BadValueError(
            f"latent cache {latents} was extracted at {dataset.image_size} px, "
            f"but --image-size is {image_size}"
        )
    _check_classes(dataset, source=latents, num_classes=num_classes)
    moments, _ = dataset[0]
    shape = (moments.shape[0] // 2, *moments.shape[1:])  # moments = [mean; logvar]

    def draw_latent(x, draws):
        x = x.to(device, non_blocking=True)  # pinned by the DataLoader on CUDA
        return sample_latent(x, draws.latent_noise.to(device))  # (N, C, h, w)

    return dataset, "latents", shape, draw_latent


def _image_data(
    images: str, *, pixel: bool, vae: str, image_size: int, num_classes: int, device: torch.device
):
    """An ImageFolder: flipped per sample, then encoded by the VAE, or as pixels (`pixel`)."""
    from udit.data.imagenet import build_image_dataset
    from udit.data.latents import sample_latent

    dataset = build_image_dataset(images, image_size, flip=False)
    _check_classes(dataset, source=images, num_classes=num_classes)

    def flip(x, draws):
        x = x.to(device, non_blocking=True)  # pinned by the DataLoader on CUDA
        return torch.where(draws.flip.to(device)[:, None, None, None], x.flip(-1), x)

    if pixel:
        return dataset, "pixels", (3, image_size, image_size), flip

    from udit.data.vae import latent_shape, load_vae

    autoencoder = load_vae(vae, device=device)
    shape = latent_shape(autoencoder, image_size)

    @torch.no_grad()
    def encode(x, draws):
        posterior = autoencoder.encode(flip(x, draws)).latent_dist
        moments = torch.cat([posterior.mean, posterior.logvar], dim=1)  # (N, 2C, h, w)
        return sample_latent(moments, draws.latent_noise.to(device))  # (N, C, h, w)

    return dataset, "vae", shape, encode


def _check_classes(dataset, *, source: str, num_classes: int) -> None:
    if dataset.num_classes > num_classes:
        raise BadValueError(
            f"{source} has {dataset.num_classes} classes but --num-classes is {num_classes}"
        )
