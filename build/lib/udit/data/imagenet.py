"""Images from an ImageFolder tree (ImageNet or the toy set), preprocessed as ADM / DiT.

Labels are the indices of the sorted class-folder names (torchvision ImageFolder), so
ImageNet's `n01440764 ... n15075141` folders give labels 0..999 in the usual order.
Preprocessing (DiT train.py, from ADM guided_diffusion/image_datasets.py):
centre crop with box-downsample + bicubic resize, random horizontal flip, [-1, 1].

Every image file any command reads (extract-latents, train --images, build-reference, the
stand-in Inception's calibration) is opened by `read_rgb_image`: a file PIL cannot decode
(truncated, corrupt, a decompression bomb) fails naming the file, and a pixel format that
`convert("RGB")` would silently destroy is scaled correctly or refused (see below).
"""

import numpy as np
import torch
from PIL import Image
from torchvision import transforms
from torchvision.datasets import ImageFolder

from udit.errors import BadValueError, shown

# Modes whose convert("RGB") is faithful: 8 bits per channel, palette or bilevel images.
EIGHT_BIT_MODES = frozenset(
    {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
)
# 16-bit grayscale (a 16-bit PNG opens as "I;16"): convert("RGB") clips every value above 255
# to white, so these are scaled to 8 bits here instead (65535 / 257 = 255, exact at both ends).
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
SIXTEEN_TO_EIGHT = 257
# The failures of a file PIL cannot decode (SyntaxError: a broken PNG chunk; ValueError and
# EOFError: some truncated or corrupt headers). OS faults of the open() itself stay OSErrors.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
FIX = "remove or replace it"


class UnreadableImageError(BadValueError):
    """An image file that cannot be decoded, or whose pixel format cannot become RGB."""

    def __init__(self, message: str):
        super().__init__(_original_message(message, type(self).__name__))


def _original_message(message: str, name: str) -> str:
    """A DataLoader worker's exception comes back as type(err)(its whole traceback text)
    ("Caught X in DataLoader worker process 0. Original Traceback ..."): keep the one line
    the worker raised, the text after the class name on the traceback's last line."""
    if message.startswith("Caught ") and f"{name}: " in message:
        return message.rstrip().rsplit(f"{name}: ", 1)[1]
    return message


def read_rgb_image(path) -> Image.Image:
    """The RGB image in the file `path`, decoded in full (a truncated file fails here, not
    later inside a batch); raises UnreadableImageError naming the file."""
    with open(path, "rb") as f:  # a missing file or no permission: the OSError names the path
        try:
            image = Image.open(f)
            image.load()
        except DECODE_ERRORS as err:
            why = str(err) or type(err).__name__
            raise UnreadableImageError(
                f"{shown(path)}: not a readable image ({why}); {FIX}"
            ) from None
        return _to_rgb(image, path)


def _to_rgb(image: Image.Image, path) -> Image.Image:
    if image.mode in EIGHT_BIT_MODES:
        return image.convert("RGB")
    if image.mode in SIXTEEN_BIT_MODES:
        levels = np.asarray(image).astype(np.float64)  # (H, W) in [0, 65535]
        gray = np.rint(levels / SIXTEEN_TO_EIGHT).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")  # (H, W) uint8: mode "L"
    # 32-bit integer ("I") and float ("F") pixels have no fixed white: any scale is a guess
    raise UnreadableImageError(
        f"{shown(path)}: image mode {image.mode!r} cannot be read as RGB (convert('RGB') would "
        f"clip its values to 0..255; no fixed scale maps it to 8 bits); save it as an 8-bit "
        f"or 16-bit image, or {FIX}"
    )


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
                root,
                transform=build_image_transform(image_size=image_size, flip=flip),
                loader=read_rgb_image,
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
