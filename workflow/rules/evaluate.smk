# Evaluation stage: metrics of one sample file against its dataset's reference statistics.


rule evaluate:
    input:
        samples=paths.samples(R, "{experiment}", "{tag}"),
        reference=NODES.eval_reference,
        weights=NODES.inception_input,
    output:
        paths.metrics(R, "{experiment}", "{tag}"),
    log:
        f"{R}/logs/evaluate/{{experiment}}-{{tag}}.log",
    benchmark:
        f"{R}/benchmarks/evaluate/{{experiment}}-{{tag}}.tsv"
    conda:
        "../../environment.yml"
    resources:
        **NODES.resources_for("evaluate"),
    params:
        udit=udit_cmd,
        reference=NODES.eval_reference_path,
        weights=NODES.inception_weights(),
    shell:
        "{params.udit} evaluate --samples {input.samples:q} --reference {params.reference:q}"
        " --inception-weights {params.weights:q} --out {output:q} > {log:q} 2>&1"
