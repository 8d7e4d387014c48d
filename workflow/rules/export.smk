# Export stage (`snakemake export`, not part of `all`): each trained milestone checkpoint of a
# latent-space experiment -> a Hub-ready diffusers DiTPipeline folder (`udit export`), whose
# model card carries the run's unguided metrics of that milestone where the DAG evaluates it.
# `udit push --repo-id ORG/NAME FOLDER` uploads one.


rule export_checkpoint:
    input:
        unpack(NODES.export_inputs),
    output:
        directory(paths.export(R, "{experiment}", "{step}")),
    log:
        f"{R}/logs/export/{{experiment}}-{{step}}.log",
    benchmark:
        f"{R}/benchmarks/export/{{experiment}}-{{step}}.tsv"
    conda:
        "../../environment.yml"
    resources:
        **NODES.resources_for("export"),
    params:
        udit=udit_cmd,
        args=NODES.export_args,
    shell:
        "{params.udit} export --checkpoint {input.checkpoint:q} --out {output:q}"
        " {params.args} > {log:q} 2>&1"


rule export:
    default_target: False
    # `snakemake export`: the diffusers folder of every trained milestone (trains, samples and
    # evaluates what is missing first, for the cards' metrics).
    input:
        NODES.all_exports(),
    localrule: True
