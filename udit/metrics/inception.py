"""Inception-V3 features for every ADM metric in one pass, through torch-fidelity.

ADM's evaluator (guided-diffusion evaluations/evaluator.py, copied in the U-DiT repo as
evaluator.py) reads three things from the TF graph `classify_image_graph_def.pb`
(inception-2015-12-05):
  - `pool_3:0`        2048-d pooled features           -> FID, precision/recall (and KID)
  - `mixed_6/conv:0`  first 7 channels, 17x17, NHWC    -> sFID (17*17*7 = 2023 dims)
  - `softmax/logits/MatMul` with pool_3 (no bias) -> softmax -> Inception Score

torch-fidelity's FeatureExtractorInceptionV3 is a port of the same graph (weights
weights-inception-2015-12-05-6726825d.pth). Its features '2048' and 'logits_unbiased'
are pool_3 and the bias-free logits. The spatial feature is not exposed, so we register
a subclass that also returns it. Which module is TF `mixed_6/conv`: torch-fidelity's
converter (utils/util_convert_inception_weights.py, map_tf_to_pt) maps the TF blocks
mixed, mixed_1 ... mixed_10 to Mixed_5b, 5c, 5d, 6a, 6b, 6c, 6d, 6e, 7a, 7b, 7c, and
"mixed_6/conv/{conv2d_params,batchnorm}" to "Mixed_6d.branch1x1.{conv,bn}". In the TF graph
the op named `mixed_6/conv` closes that scope with the ReLU, so the tensor is the
output of Mixed_6d.branch1x1 (conv -> BN -> ReLU), 192 channels at 17x17; ADM keeps
channels [:7] and flattens NHWC. (Not checked against TF itself: no TF here.)

Weights are never downloaded implicitly (torch-fidelity would fetch them when the path is
None): `resolve_weights` finds a local file or fails naming the file, URL and config key.
"""

import io
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torch_fidelity import FeatureExtractorInceptionV3, register_feature_extractor
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.utils import create_feature_extractor

from udit.errors import UserError, load_failure

EXTRACTOR_NAME = "inception-v3-adm"
POOL = "2048"  # torch-fidelity name of TF pool_3 (FID, P/R, KID)
LOGITS = "logits_unbiased"  # torch-fidelity name of TF softmax/logits/MatMul (IS)
SPATIAL = "mixed_6_conv_7"  # TF mixed_6/conv[..., :7], NHWC-flattened (sFID)
ALL_FEATURES = (POOL, LOGITS, SPATIAL)

SPATIAL_CHANNELS = 7  # evaluator.py _create_feature_graph: spatial[..., :7]
SPATIAL_SIZE = 17  # Mixed_6d map is 17x17 for a 299x299 input
SPATIAL_DIM = SPATIAL_SIZE * SPATIAL_SIZE * SPATIAL_CHANNELS  # 2023
EARLIEST_FEATURE_AFTER_MIXED_6D = "768"  # torch-fidelity stops after Mixed_6e for it

WEIGHTS_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = (
    f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{WEIGHTS_FILENAME}"
)
WEIGHTS_CONFIG_KEY = "inception_weights"


def default_weights_path() -> Path:
    """Where torch hub (and so torch-fidelity) keeps the file: $TORCH_HOME/hub/checkpoints/."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILENAME


def resolve_weights(path: str | Path | None) -> Path:
    """An existing local weights file: `path` if given, else the torch hub cache; no download."""
    candidate = Path(path) if path is not None else default_weights_path()
    if candidate.is_file():
        return candidate
    where = (
        f"--inception-weights {candidate}"
        if path is not None
        else f"the torch hub cache ({candidate})"
    )
    raise FileNotFoundError(
        f"Inception weights not found at {where}. Metrics need the FID Inception-V3 weights "
        f"{WEIGHTS_FILENAME}; nothing is downloaded implicitly. Fetch it once from {WEIGHTS_URL} "
        f"and pass it with --inception-weights PATH, set the config key '{WEIGHTS_CONFIG_KEY}', "
        f"or place it in $TORCH_HOME/hub/checkpoints/."
    )


class UnsafeWeightsError(UserError):
    """An Inception weights file that is not a plain tensor state dict (it is never unpickled)."""


class WrongWeightsError(UserError):
    """An Inception weights file that is a state dict, but not of the FID InceptionV3."""


WEIGHTS_HINT = (
    f"use the official {WEIGHTS_FILENAME} ({WEIGHTS_URL}) or a stand-in from "
    "`udit make-standin-inception`"
)
KEYS_SHOWN = 3  # key names an error lists (a DiT state dict has hundreds)


def safe_weights(path) -> io.BytesIO:
    """The state dict at `path` read with weights_only=True (a pickle that would run code, or
    any other object, is refused naming the file), every float finite, re-saved in memory for
    torch-fidelity."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any load failure means: refuse the file
        raise UnsafeWeightsError(
            f"Inception weights {path}: refused, not a plain tensor state dict "
            f"({load_failure(err)}; loaded "
            f"with weights_only=True, nothing in it was run); {WEIGHTS_HINT}"
        ) from None
    if not (
        isinstance(state, dict)
        and state
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    ):
        raise UnsafeWeightsError(
            f"Inception weights {path}: refused, holds a {type(state).__name__}, not a state "
            f"dict of tensors; {WEIGHTS_HINT}"
        )
    _check_finite(state, path)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


def _check_finite(state: dict[str, torch.Tensor], path) -> None:
    for key, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            bad = tensor[~torch.isfinite(tensor)].reshape(-1)[0].item()
            raise WrongWeightsError(
                f"Inception weights {path}: {key} holds {bad} (every weight must be finite); "
                f"{WEIGHTS_HINT}"
            )


def check_architecture(state: dict, *, expected: dict, path) -> None:
    """Refuse a state dict whose keys or shapes are not those of `expected` (the freshly built
    InceptionV3's), naming a few of the keys that differ."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    resized = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if not (missing or unexpected or resized):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} of its {len(expected)} keys missing ({_few(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({_few(unexpected)})")
    for key in resized[:KEYS_SHOWN]:
        parts.append(
            f"{key} is {list(state[key].shape)}, InceptionV3 has {list(expected[key].shape)}"
        )
    raise WrongWeightsError(
        f"Inception weights {path}: not a state dict of the FID InceptionV3: {'; '.join(parts)}; "
        f"{WEIGHTS_HINT}"
    )


def _few(keys: list[str]) -> str:
    more = f", ... {len(keys) - KEYS_SHOWN} more" if len(keys) > KEYS_SHOWN else ""
    return ", ".join(keys[:KEYS_SHOWN]) + more


class InceptionV3ADM(FeatureExtractorInceptionV3):
    """torch-fidelity's Inception-V3 plus ADM's sFID feature (see module docstring)."""

    def __init__(self, name, features_list, **kwargs):
        # torch-fidelity maps 'float64' to float32 without a word (helpers.text_to_dtype):
        # refuse it rather than record a precision we did not use.
        dtype = kwargs.get("feature_extractor_internal_dtype")
        if dtype not in (None, "float32"):
            raise ValueError(
                f"feature_extractor_internal_dtype={dtype!r}: only float32 is supported"
            )
        if kwargs.get("feature_extractor_weights_path") is None:
            raise ValueError("feature_extractor_weights_path is required (no implicit download)")
        # torch-fidelity torch.loads the path with weights_only=False: hand it our own re-save
        # of a state dict read with weights_only=True, never the user's file
        self._weights_file = kwargs["feature_extractor_weights_path"]  # named in errors
        kwargs["feature_extractor_weights_path"] = safe_weights(self._weights_file)
        super().__init__(name, features_list, **kwargs)
        self._spatial = None
        self.Mixed_6d.branch1x1.register_forward_hook(self._keep_spatial)

    def load_state_dict(self, state_dict, strict=True, assign=False):
        # torch-fidelity's __init__ loads the weights here, after building every layer: compare
        # keys and shapes first, so a wrong file is one line naming it, not torch's traceback
        check_architecture(state_dict, expected=self.state_dict(), path=self._weights_file)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _keep_spatial(self, module, inputs, output):
        self._spatial = output  # (N, 192, 17, 17), after ReLU

    def forward(self, x):  # x: (N, 3, H, W) uint8
        requested = self.features_list
        base = [f for f in requested if f != SPATIAL] or [EARLIEST_FEATURE_AFTER_MIXED_6D]
        # torch-fidelity's forward returns the features named in self.features_list and
        # stops at the last one; hand it only those it knows, then restore our list.
        self.features_list = base
        try:
            base_out = dict(zip(base, super().forward(x)))
        finally:
            self.features_list = requested
        if SPATIAL in requested:
            spatial = self._spatial[:, :SPATIAL_CHANNELS]  # (N, 7, 17, 17)
            spatial = spatial.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # (N, 2023) NHWC order
            base_out[SPATIAL] = spatial.to(torch.float32)
        self._spatial = None
        return tuple(base_out[f] for f in requested)

    @staticmethod
    def get_provided_features_list():
        return (*FeatureExtractorInceptionV3.get_provided_features_list(), SPATIAL)

    @staticmethod
    def can_be_compiled():
        return False  # the forward hook keeps state between modules


if EXTRACTOR_NAME not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(EXTRACTOR_NAME, InceptionV3ADM)


def add_weights_argument(parser) -> None:
    """--inception-weights: the one option of `udit build-reference` and `udit evaluate`."""
    parser.add_argument(
        "--inception-weights",
        type=Path,
        default=None,
        help=f"{WEIGHTS_FILENAME} (default: $TORCH_HOME/hub/checkpoints/)",
    )


def weights_from_args(parser, args) -> Path:
    """Resolve --inception-weights; a missing file exits 2 with the message, no traceback."""
    try:
        return resolve_weights(args.inception_weights)
    except FileNotFoundError as err:
        parser.error(str(err))


def load_extractor(
    *,
    weights: Path,  # an existing local file (see resolve_weights)
    features: tuple[str, ...] = ALL_FEATURES,
    device: torch.device | str = "cpu",
) -> InceptionV3ADM:
    """The registered extractor through torch-fidelity's own factory, on `device`."""
    extractor = create_feature_extractor(
        EXTRACTOR_NAME,
        list(features),
        cuda=False,  # we move it ourselves so that any device (cuda:1, cpu) works
        feature_extractor_weights_path=str(weights),
        verbose=False,
    )
    # channels_last: the same convolutions in another summation order (features agree to ~1e-5
    # relative), 30% faster on CPU (3.2 s -> 2.2 s for 16 images, one thread) and the layout
    # cuDNN prefers on GPU.
    return extractor.to(device, memory_format=torch.channels_last)


@torch.no_grad()
def extract_features(
    dataset: Dataset,  # items: uint8 (3, H, W) tensors
    *,
    extractor: InceptionV3ADM,
    batch_size: int = 64,  # ADM evaluator batch size; results do not depend on it
    num_workers: int = 0,  # DataLoader workers (torch-fidelity hard-codes 4)
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """One pass over `dataset`; returns {feature name: float32 (N, D)} for every requested
    feature."""
    if batch_size < 1 or num_workers < 0:
        raise ValueError(
            f"batch_size must be >= 1 and num_workers >= 0, got {batch_size}, {num_workers}"
        )
    device = next(extractor.parameters()).device
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    names = extractor.get_requested_features_list()
    chunks: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    done = 0
    for batch in loader:  # (B, 3, H, W) uint8
        out = extractor.convert_features_tuple_to_dict(
            extractor(batch.to(device, non_blocking=True))
        )
        for name in names:
            chunks[name].append(out[name].cpu())
        done += batch.shape[0]
        if progress:
            print(f"\rinception features: {done}/{len(dataset)}", end="", flush=True)
    if progress:
        print()
    return {name: torch.cat(parts).numpy() for name, parts in chunks.items()}
