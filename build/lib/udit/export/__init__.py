"""Share a reproduction the way the field shares models: diffusers DiTPipeline folders with a
Hub model card (`udit export`), uploaded with huggingface_hub (`udit push`).

    udit.export.dit_diffusers  registry DiT -> diffusers' DiTTransformer2DModel (key map)
    udit.export.hub_model      any other registry model as a diffusers ModelMixin
    udit.export.card           the README.md model card
    udit.export.cli            `udit export`
    udit.export.push           `udit push`

Nothing is imported here: diffusers takes seconds to import, and `udit push` needs none of it.
"""
