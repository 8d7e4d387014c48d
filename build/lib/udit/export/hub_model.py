"""Any registry model as a diffusers model: save_pretrained / from_pretrained, and the forward
call of diffusers' DiTTransformer2DModel, so DiTPipeline can drive U-DiT, U-ViT, PixArt-alpha
and DiffiT exports.

    import udit.export.hub_model  # diffusers only loads components of modules already imported
    pipe = DiTPipeline.from_pretrained("EXPORT_DIR")

The config is the registry name plus the constructor options, so from_pretrained rebuilds the
network with udit.models.create_model and loads its safetensors weights. A U-shaped model is
stored in its deployed form: each re-parameterised FFN (RepFFN, the train graph) is folded into
the 1x1 / dw5x5 / 1x1 FFN it computes at eval time (DWConvFFN, paper T9's "+ re-param").
"""

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from udit.export.dit_diffusers import PIPELINE_NULL_LABEL
from udit.models import create_model
from udit.models.unet_blocks import RepFFN

DEPLOYED_FFN = "dwconv"  # DWConvFFN: the graph RepFFN folds into


class UDiTTransformer2DModel(ModelMixin, ConfigMixin):
    """A registry model behind DiTTransformer2DModel's interface.

    forward(hidden_states (N, C, H, W), timestep (N,) or scalar, class_labels (N,))
    -> Transformer2DModelOutput(sample=(N, out_channels, H, W)): eps, then the learned-sigma
    channels when out_channels = 2 C (DiTPipeline splits them off). Labels >= num_classes mean
    "no class": DiTPipeline passes 1000 for its unconditional half whatever num_classes is.
    """

    @register_to_config
    def __init__(
        self,
        model: str = "U-DiT-B",  # registry name (udit.models.MODELS)
        model_kw: dict | None = None,  # constructor overrides, e.g. widths of a toy run
        sample_size: int = 32,  # latent side; DiTPipeline reads config.sample_size
        in_channels: int = 4,
        out_channels: int = 8,  # 2 * in_channels with learned sigma
        num_classes: int = 1000,
    ):
        super().__init__()
        self.net = create_model(
            model,
            input_size=sample_size,
            in_channels=in_channels,
            num_classes=num_classes,
            **(model_kw or {}),
        )
        built = getattr(self.net, "out_channels", None)
        if built != out_channels:
            raise ValueError(
                f"{model} with {model_kw} outputs {built} channels, not {out_channels}"
            )

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor | int | None = None,
        class_labels: torch.Tensor | None = None,
        return_dict: bool = True,
        **_ignored,  # cross_attention_kwargs and the like: nothing here uses them
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        n = hidden_states.shape[0]
        t = torch.as_tensor(timestep, device=hidden_states.device).reshape(-1).expand(n)  # (N,)
        null = self.config.num_classes
        y = torch.as_tensor(class_labels, device=hidden_states.device).reshape(-1)  # (N,)
        y = torch.where(y >= null, torch.full_like(y, null), y)
        out = self.net(hidden_states, t, y)  # (N, out_channels, H, W)
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)


def deployed_state_dict(model: nn.Module) -> tuple[dict, bool]:
    """(state dict with every RepFFN folded into DWConvFFN keys, whether any was folded).

    RepFFN P: P.project_in.{0,1}, P.dwconv.{0,1,2}, P.project_out.{0,1}
    -> DWConvFFN P: P.project_in (dim -> h, 1x1), P.dwconv (h, 1, 5, 5), P.project_out (h -> dim).
    """
    state = {k: v.detach() for k, v in model.state_dict().items()}
    folded = False
    for path, module in model.named_modules():
        if not isinstance(module, RepFFN):
            continue
        folded = True
        prefix = f"{path}."
        state = {k: v for k, v in state.items() if not k.startswith(prefix)}
        w = module.fused_weights()
        for name, key in (("project_in", "in"), ("dwconv", "dw"), ("project_out", "out")):
            state[f"{prefix}{name}.weight"] = w[f"w_{key}"]
            state[f"{prefix}{name}.bias"] = w[f"b_{key}"]
    return {k: v.clone().contiguous() for k, v in state.items()}, folded


def from_udit(model: nn.Module, *, name: str, model_kw: dict) -> UDiTTransformer2DModel:
    """Wrap a loaded registry model (any family) in the hub class, FFNs folded; eval mode."""
    state, folded = deployed_state_dict(model)
    kw = {**model_kw, "ffn": DEPLOYED_FFN} if folded else dict(model_kw)
    hub = UDiTTransformer2DModel(
        model=name,
        model_kw=kw,
        sample_size=model.input_size,
        in_channels=model.in_channels,
        out_channels=model.out_channels,
        num_classes=model.num_classes,
    )
    hub.net.to(next(model.parameters()).dtype)  # a float64 model stays float64 (tests compare)
    hub.net.load_state_dict(state, strict=True)  # a bug of the fold if any key differs
    return hub.eval().requires_grad_(False)


__all__ = ["PIPELINE_NULL_LABEL", "UDiTTransformer2DModel", "deployed_state_dict", "from_udit"]
