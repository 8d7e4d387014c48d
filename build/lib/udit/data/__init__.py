"""Training data: ImageFolder images, the toy set, the VAE and the latent cache.

Contract with the trainer (udit/training/):

    dataset, kind, shape, prepare = udit.training.data.build_train_data(...)
        from exactly one of `images` (ImageFolder root) or `latents` (a cache dir); kind is
        "latents", "vae" (images encoded online) or "pixels".

    kind == "latents": LatentDataset(cache_dir)
        item -> (moments: float32 (2C, h, w) = [mean; logvar] of the VAE posterior, label: int)
        len  = images x 2 flips (item i = image i // 2, flip i % 2), so one epoch sees both
        flips, as DiT's RandomHorizontalFlip does in expectation. Per batch:
            noise = torch.randn(mean_shape, generator=g)  # the trainer's seeded generator
            x = sample_latent(moments, noise)           # (N, C, h, w), times LATENT_SCALE
        .num_classes, .classes, .latent_channels, .latent_size, .image_size, .manifest

    kind == "images": ImageDataset / build_image_dataset(root, image_size, flip=True)
        item -> (image: float32 (3, H, W) in [-1, 1], label: int); ADM centre crop + random
        flip. Pixel-space training uses it directly; online-VAE training encodes it:
            x = load_vae(name).encode(image).latent_dist.sample() * LATENT_SCALE
        .num_classes, .classes

    LATENT_SCALE = 0.18215 (DiT train.py; paper_numbers.yaml training_settings.latent_scale)

Labels are indices of the sorted class-folder names (torchvision ImageFolder) in both kinds.
Every file is checked where it is read: image files by imagenet.read_rgb_image, latent
manifests and shards by shards.read_manifest / check_shard, VAE folders by vae.load_vae.
Names are imported lazily (PEP 562) so `udit toy-data` runs without importing torch.
"""

import importlib

_EXPORTS = {
    "LATENT_SCALE": "udit.data.vae",
    "DEFAULT_VAE": "udit.data.vae",
    "VaeNotAvailableError": "udit.data.vae",
    "BadVaeError": "udit.data.vae",
    "load_vae": "udit.data.vae",
    "tiny_vae_config": "udit.data.vae",
    "save_tiny_vae": "udit.data.vae",
    "ImageDataset": "udit.data.imagenet",
    "build_image_dataset": "udit.data.imagenet",
    "center_crop_arr": "udit.data.imagenet",
    "read_rgb_image": "udit.data.imagenet",
    "UnreadableImageError": "udit.data.imagenet",
    "LatentDataset": "udit.data.latents",
    "CorruptCacheError": "udit.data.shards",
    "read_manifest": "udit.data.shards",
    "check_shard": "udit.data.shards",
    "extract_latents": "udit.data.latents",
    "sample_latent": "udit.data.latents",
    "generate_toy_data": "udit.data.toy",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'udit.data' has no attribute {name!r}")


__all__ = list(_EXPORTS)
