# Evaluation stage: metrics of one sample file against its dataset's reference statistics.


rule evaluate:
    input:
        samples=f"{R}/{{experiment}}/samples/{{step}}-cfg{{cfg}}.npz",
        reference=eval_reference,
        weights=inception_input,
    output:
        f"{R}/{{experiment}}/metrics/{{step}}-cfg{{cfg}}.json",
    log:
        f"{R}/logs/evaluate/{{experiment}}-{{step}}-cfg{{cfg}}.log",
    benchmark:
        f"{R}/benchmarks/evaluate/{{experiment}}-{{step}}-cfg{{cfg}}.tsv"
    params:
        udit=udit_cmd,
        reference=eval_reference_path,
        weights=inception_weights(),
    resources:
        **resources_for("evaluate"),
    conda:
        "../../environment.yml"
    shell:
        "{params.udit} evaluate --samples {input.samples} --reference {params.reference}"
        " --inception-weights {params.weights} --out {output} > {log} 2>&1"
