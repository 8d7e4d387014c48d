# Sampling stage: one node per (experiment, milestone, cfg scale, sampling seed), named by its
# evaluation tag (udit.paths.eval_tag); released checkpoints go through the same rule.


rule sample:
    input:
        checkpoint=NODES.sample_checkpoint,
        vae=NODES.sample_vae_input,
    output:
        samples=paths.samples(R, "{experiment}", "{tag}"),
        grid=report(
            paths.grid(R, "{experiment}", "{tag}"),
            caption="../captions/grid.rst",
            category="Samples",
            subcategory="{experiment}",
        ),
    log:
        f"{R}/logs/sample/{{experiment}}-{{tag}}.log",
    benchmark:
        f"{R}/benchmarks/sample/{{experiment}}-{{tag}}.tsv"
    conda:
        "../../environment.yml"
    resources:
        **NODES.resources_for("sample"),
    params:
        launch=LAUNCH,
        python=PYTHON,
        threads=rank_threads,
        options=NODES.sample_options,
    shell:
        """
        # torchrun over the job's GPUs (and nodes); SIGUSR1 before the time limit (launch.sh)
        {params.launch} {resources.nodes} {resources.gpu} {params.threads} {resources.stop_lead_s} \
            {params.python} sample --checkpoint {input.checkpoint:q} --out {output.samples:q} \
            --grid {output.grid:q} --options {params.options:q} >{log:q} 2>&1
        """
