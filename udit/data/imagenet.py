"""Images from an ImageFolder tree (ImageNet or the toy set), preprocessed as ADM / DiT.

Labels are the indices of the sorted class-folder names (torchvision ImageFolder), so
ImageNet's `n01440764 ... n15075141` folders give labels 0..999 in the usual order.
Preprocessing (DiT train.py, from ADM guided_diffusion/image_datasets.py):
centre crop with box-downsample + bicubic resize, random horizontal flip, [-1, 1].
"""

import numpy as np
import torch
from PIL import Image
from torchvision import transforms
from torchvision.datasets import ImageFolder

from udit.errors import BadValueError


def center_crop_arr(pil_image: Image.Image, image_size: int) -> Image.Image:
    """ADM centre crop: halve with a box filter while the short side >= 2*image_size, then
    bicubic-resize so the short side is image_size, then cut the centre image_size square.

    Box-halving first keeps large photos from aliasing (bicubic alone would skip pixels).
    """
    image = pil_image
    while min(image.size) >= 2 * image_size:
        image = image.resize((image.width // 2, image.height // 2), resample=Image.BOX)
    scale = image_size / min(image.size)
    new_size = (round(image.width * scale), round(image.height * scale))
    image = image.resize(new_size, resample=Image.BICUBIC)
    left = (image.width - image_size) // 2  # floor: odd margins put the extra pixel right/bottom
    top = (image.height - image_size) // 2
    arr = np.asarray(image)
    return Image.fromarray(arr[top : top + image_size, left : left + image_size])


class CenterCrop:
    """center_crop_arr as a picklable transform (DataLoader workers may be spawned)."""

    def __init__(self, image_size: int):
        self.image_size = image_size

    def __call__(self, image: Image.Image) -> Image.Image:
        return center_crop_arr(image, self.image_size)


def build_image_transform(*, image_size: int, flip: bool = True) -> transforms.Compose:
    """PIL image -> float tensor (3, image_size, image_size) in [-1, 1]."""
    steps = [CenterCrop(image_size)]
    if flip:
        steps.append(transforms.RandomHorizontalFlip())  # p = 0.5, as DiT
    steps += [
        transforms.ToTensor(),  # [0, 1]
        transforms.Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]),  # -> [-1, 1]
    ]
    return transforms.Compose(steps)


class ImageDataset(ImageFolder):
    """ImageFolder whose items are (image (3, H, W) in [-1, 1], label int)."""

    def __init__(self, root: str, *, image_size: int, flip: bool = True):
        if image_size <= 0:
            raise BadValueError(f"--image-size must be positive, got {image_size}")
        try:
            super().__init__(
                root, transform=build_image_transform(image_size=image_size, flip=flip)
            )
        except FileNotFoundError as e:
            raise FileNotFoundError(
                f"image folder {root!r} is not an ImageFolder tree (root/<class_name>/<image>): {e}"
            ) from e
        self.image_size = image_size
        self.flip = flip

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = super().__getitem__(index)
        return image, int(label)


def build_image_dataset(root: str, image_size: int, flip: bool = True) -> ImageDataset:
    """ADM/DiT-preprocessed ImageFolder dataset; flip=False gives the deterministic view."""
    return ImageDataset(root, image_size=image_size, flip=flip)
