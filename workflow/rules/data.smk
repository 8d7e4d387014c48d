# Data stage: toy images, the tiny VAE, latents (extracted once per dataset and shared by
# every training node), the stand-in Inception and the reference statistics.


rule make_toy_data:
    output:
        directory(paths.data_images(R, "{dataset}")),
    log:
        f"{R}/logs/make_toy_data/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/make_toy_data/{{dataset}}.tsv"
    conda:
        "../../environment.yml"
    resources:
        **NODES.resources_for("make_toy_data"),
    params:
        udit=udit_cmd,
        ds=NODES.dataset_params,
    shell:
        "{params.udit} toy-data --out {output:q} --num-classes {params.ds[classes]:q}"
        " --per-class {params.ds[per_class]:q} --image-size {params.ds[image_size]:q}"
        " --seed {params.ds[seed]:q} > {log:q} 2>&1"


rule make_tiny_vae:
    output:
        directory(paths.tiny_vae(R)),
    log:
        f"{R}/logs/make_tiny_vae.log",
    benchmark:
        f"{R}/benchmarks/make_tiny_vae.tsv"
    conda:
        "../../environment.yml"
    resources:
        **NODES.resources_for("make_tiny_vae"),
    params:
        udit=udit_cmd,
    shell:
        "{params.udit} tiny-vae --out {output:q} --seed 0 > {log:q} 2>&1"


rule extract_latents:
    input:
        unpack(NODES.dataset_inputs),
    output:
        paths.latents_manifest(R, "{dataset}"),
    log:
        f"{R}/logs/extract_latents/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/extract_latents/{{dataset}}.tsv"
    conda:
        "../../environment.yml"
    resources:
        **NODES.resources_for("extract_latents"),
    params:
        udit=udit_cmd,
        ds=NODES.dataset_params,
        out=subpath(output[0], parent=True),
    shell:
        # re-running resumes from the shards already written (a retried job loses nothing)
        "{params.udit} extract-latents --images {params.ds[images]:q} --out {params.out:q}"
        " --image-size {params.ds[image_size]:q} --vae {params.ds[vae]:q} > {log:q} 2>&1"


rule make_standin_inception:
    input:
        NODES.images_input(NODES.calibration_dataset()),
    output:
        paths.standin_inception(R),
    log:
        f"{R}/logs/make_standin_inception.log",
    benchmark:
        f"{R}/benchmarks/make_standin_inception.tsv"
    conda:
        "../../environment.yml"
    resources:
        **NODES.resources_for("make_standin_inception"),
    params:
        udit=udit_cmd,
        standin=NODES.standin_params(),
    shell:
        "{params.udit} make-standin-inception --out {output:q} --seed {params.standin[seed]:q}"
        " --calibration-images {params.standin[images]:q}"
        " --image-size {params.standin[size]:q} > {log:q} 2>&1"


rule build_reference:
    input:
        images=lambda w: NODES.images_input(w.dataset),
        weights=NODES.inception_input,
    output:
        paths.reference(R, "{dataset}"),
    log:
        f"{R}/logs/build_reference/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/build_reference/{{dataset}}.tsv"
    conda:
        "../../environment.yml"
    resources:
        **NODES.resources_for("build_reference"),
    params:
        udit=udit_cmd,
        ds=NODES.dataset_params,
        weights=NODES.inception_weights(),
    shell:
        "{params.udit} build-reference --images {params.ds[images]:q} --out {output:q}"
        " --inception-weights {params.weights:q} --image-size {params.ds[image_size]:q}"
        " {params.ds[subset]} > {log:q} 2>&1"


rule download:
    log:
        f"{R}/logs/download.log",
    # `snakemake download --configfile config/paper.yaml` on a machine with internet: the
    # reference batches, Inception weights, VAE and released checkpoints the config names
    localrule: True
    conda:
        "../../environment.yml"
    params:
        udit=udit_cmd,
        config=NODES.report_config,
    shell:
        "{params.udit} download --configfile {params.config:q} > {log:q} 2>&1"
