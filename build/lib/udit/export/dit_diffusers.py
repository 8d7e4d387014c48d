"""A registry DiT (official facebookresearch/DiT keys) -> diffusers' own DiTTransformer2DModel.

Key map (D = hidden size, every block i; diffusers gives each block its own copy of the
timestep / label embedders, DiT shares one):

    x_embedder.proj.*                  -> pos_embed.proj.*
    t_embedder.mlp.{0,2}.*             -> EMB.timestep_embedder.linear_{1,2}.*
    y_embedder.embedding_table.weight  -> EMB.class_embedder.embedding_table.weight
                                          (EMB = transformer_blocks.{i}.norm1.emb, every i)
    blocks.{i}.attn.qkv.* (3D, D)      -> transformer_blocks.{i}.attn1.to_{q,k,v}.* (D, D) each
    blocks.{i}.attn.proj.*             -> transformer_blocks.{i}.attn1.to_out.0.*
    blocks.{i}.mlp.fc{1,2}.*           -> transformer_blocks.{i}.ff.net.{0.proj,2}.*
    blocks.{i}.adaLN_modulation.1.*    -> transformer_blocks.{i}.norm1.linear.*
    final_layer.adaLN_modulation.1.*   -> proj_out_1.*
    final_layer.linear.*               -> proj_out_2.*
    pos_embed                          -> (not stored: diffusers recomputes the same sin-cos table)

Two things diffusers fixes that a udit DiT may not have: the null label is 1000 (DiTPipeline
hard-codes it), and the timestep features use frequencies 10000^(-k/127) (Timesteps with
downscale_freq_shift=1) where DiT uses 10000^(-k/128). The first is bridged here (label rows
padded to 1000, unused rows = the null row); the second cannot be, so `exact_timesteps` switches
a loaded model to DiT's frequencies (the folder itself holds only weights and config).
"""

import torch

from udit.errors import BadValueError

PIPELINE_NULL_LABEL = 1000  # DiTPipeline: class_null = torch.tensor([1000] * batch_size)
DIFFUSERS_MLP_RATIO = 4.0  # DiTTransformer2DModel builds FeedForward(mult=4): no option
DIT_FREQ_SHIFT = 0  # DiT: exponent / half; diffusers' DiT: exponent / (half - 1)
POS_EMBED_TOL = 1e-5  # float32 sin-cos tables computed two ways


def diffusers_config(model) -> dict:
    """DiTTransformer2DModel config for a udit DiT (the shapes are read off the modules)."""
    hidden = model.pos_embed.shape[-1]
    heads = model.blocks[0].attn.num_heads
    mlp_hidden = model.blocks[0].mlp.fc1.out_features
    if mlp_hidden != int(hidden * DIFFUSERS_MLP_RATIO):
        raise BadValueError(
            f"DiT with MLP width {mlp_hidden} (ratio {mlp_hidden / hidden:g}): diffusers' "
            f"DiTTransformer2DModel only has ratio {DIFFUSERS_MLP_RATIO:g}; export needs the "
            f"registry's mlp_ratio"
        )
    if model.num_classes > PIPELINE_NULL_LABEL:
        raise BadValueError(
            f"DiT with {model.num_classes} classes: DiTPipeline uses label "
            f"{PIPELINE_NULL_LABEL} as the unconditional one, so at most {PIPELINE_NULL_LABEL} "
            f"classes can be exported"
        )
    return {
        "num_attention_heads": heads,
        "attention_head_dim": hidden // heads,
        "in_channels": model.in_channels,
        "out_channels": model.out_channels,
        "num_layers": len(model.blocks),
        "sample_size": model.input_size,
        "patch_size": model.patch_size,
        "activation_fn": "gelu-approximate",  # DiT's Mlp: GELU(approximate="tanh")
        "num_embeds_ada_norm": PIPELINE_NULL_LABEL,
        "norm_type": "ada_norm_zero",
        "norm_elementwise_affine": False,
        "norm_eps": 1e-6,  # DiT's LayerNorm eps (diffusers' default is 1e-5)
    }


def padded_label_table(table: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes + 1, D) DiT label table -> (1001, D): rows 0..num_classes-1 as trained, every
    other row (labels the model never saw, and DiTPipeline's null label 1000) = the null row."""
    rows = PIPELINE_NULL_LABEL + 1
    if table.shape[0] == rows:
        return table
    null = table[num_classes] if table.shape[0] > num_classes else torch.zeros_like(table[0])
    out = null.expand(rows, -1).clone()  # (1001, D)
    out[:num_classes] = table[:num_classes]
    return out


def convert_state_dict(state: dict, *, num_layers: int, num_classes: int) -> dict:
    """Official DiT state dict -> DiTTransformer2DModel state dict (module docstring's map)."""
    out = {
        "pos_embed.proj.weight": state["x_embedder.proj.weight"],
        "pos_embed.proj.bias": state["x_embedder.proj.bias"],
        "proj_out_1.weight": state["final_layer.adaLN_modulation.1.weight"],
        "proj_out_1.bias": state["final_layer.adaLN_modulation.1.bias"],
        "proj_out_2.weight": state["final_layer.linear.weight"],
        "proj_out_2.bias": state["final_layer.linear.bias"],
    }
    labels = padded_label_table(state["y_embedder.embedding_table.weight"], num_classes)
    for i in range(num_layers):
        src, dst = f"blocks.{i}.", f"transformer_blocks.{i}."
        emb = dst + "norm1.emb."
        for which, layer in (("1", "0"), ("2", "2")):
            for kind in ("weight", "bias"):
                out[f"{emb}timestep_embedder.linear_{which}.{kind}"] = state[
                    f"t_embedder.mlp.{layer}.{kind}"
                ]
        out[emb + "class_embedder.embedding_table.weight"] = labels
        for kind in ("weight", "bias"):
            # timm's fused qkv: rows [q; k; v], each (D, D) / (D,)
            q, k, v = state[f"{src}attn.qkv.{kind}"].chunk(3, dim=0)
            out[f"{dst}attn1.to_q.{kind}"] = q
            out[f"{dst}attn1.to_k.{kind}"] = k
            out[f"{dst}attn1.to_v.{kind}"] = v
            out[f"{dst}attn1.to_out.0.{kind}"] = state[f"{src}attn.proj.{kind}"]
            out[f"{dst}ff.net.0.proj.{kind}"] = state[f"{src}mlp.fc1.{kind}"]
            out[f"{dst}ff.net.2.{kind}"] = state[f"{src}mlp.fc2.{kind}"]
            out[f"{dst}norm1.linear.{kind}"] = state[f"{src}adaLN_modulation.1.{kind}"]
    # fresh storage: several blocks share the embedder tensors, and safetensors refuses aliases
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def to_diffusers(model):
    """A udit DiT (eval) -> DiTTransformer2DModel holding the same weights, eval mode."""
    from diffusers import DiTTransformer2DModel

    config = diffusers_config(model)
    target = DiTTransformer2DModel(**config)
    state = {k: v.float() for k, v in model.state_dict().items()}
    converted = convert_state_dict(
        state, num_layers=config["num_layers"], num_classes=model.num_classes
    )
    result = target.load_state_dict(converted, strict=False)
    missing, unexpected = result.missing_keys, result.unexpected_keys
    if missing or unexpected:  # a bug of the key map, not of the user's checkpoint
        raise RuntimeError(f"DiT key map incomplete: missing {missing}, unexpected {unexpected}")
    _check_pos_embed(state["pos_embed"], target.pos_embed.pos_embed)
    return target.eval().requires_grad_(False)


def _check_pos_embed(stored: torch.Tensor, rebuilt: torch.Tensor) -> None:
    """diffusers does not store pos_embed: refuse a checkpoint whose table is not the fixed
    sin-cos one diffusers rebuilds (it would be silently replaced)."""
    if stored.shape != rebuilt.shape or (stored - rebuilt).abs().max() > POS_EMBED_TOL:
        raise BadValueError(
            "the checkpoint's pos_embed is not DiT's fixed sin-cos table, which diffusers "
            "recomputes instead of loading; this checkpoint cannot become a DiTTransformer2DModel"
        )


def exact_timesteps(transformer) -> None:
    """Give a loaded DiTTransformer2DModel DiT's timestep frequencies 10000^(-k/128) (in place):
    then it computes what the udit / official DiT computes. Loaded as is, diffusers uses
    10000^(-k/127)."""
    for block in transformer.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = DIT_FREQ_SHIFT
