# Sampling stage: one node per (experiment, milestone, cfg scale); released checkpoints go
# through the same rule (step 'released').


rule sample:
    input:
        checkpoint=sample_checkpoint,
        vae=sample_vae_input,
    output:
        samples=f"{R}/{{experiment}}/samples/{{step}}-cfg{{cfg}}.npz",
        grid=report(
            f"{R}/{{experiment}}/samples/{{step}}-cfg{{cfg}}.png",
            caption="../captions/grid.rst",
            category="Samples",
            subcategory="{experiment}",
        ),
    log:
        f"{R}/logs/sample/{{experiment}}-{{step}}-cfg{{cfg}}.log",
    benchmark:
        f"{R}/benchmarks/sample/{{experiment}}-{{step}}-cfg{{cfg}}.tsv"
    params:
        udit=udit_cmd,
        torchrun=torchrun_cmd,
        args=sample_args,
    resources:
        **resources_for("sample"),
    conda:
        "../../environment.yml"
    shell:
        """
        gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
        if [ "$gpus" -gt {resources.gpu} ]; then gpus={resources.gpu}; fi
        if [ "$gpus" -gt 0 ]; then
            {params.torchrun} --nproc_per_node=$gpus -m udit.cli sample --checkpoint {input.checkpoint} \
                --out {output.samples} --grid {output.grid} {params.args} > {log} 2>&1
        else
            {params.udit} sample --checkpoint {input.checkpoint} \
                --out {output.samples} --grid {output.grid} {params.args} > {log} 2>&1
        fi
        """
