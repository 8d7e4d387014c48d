# Data stage: toy images, the tiny VAE, latents (extracted once per dataset and shared by
# every training node), the stand-in Inception and the reference statistics.


rule make_toy_data:
    output:
        directory(f"{R}/data/{{dataset}}/images"),
    log:
        f"{R}/logs/make_toy_data/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/make_toy_data/{{dataset}}.tsv"
    conda:
        "../../environment.yml"
    resources:
        **resources_for("make_toy_data"),
    params:
        udit=udit_cmd,
        ds=dataset_params,
    shell:
        "{params.udit} toy-data --out {output:q} --num-classes {params.ds[classes]:q}"
        " --per-class {params.ds[per_class]:q} --image-size {params.ds[image_size]:q}"
        " --seed {params.ds[seed]:q} > {log:q} 2>&1"


rule make_tiny_vae:
    output:
        directory(f"{R}/data/tiny-vae"),
    log:
        f"{R}/logs/make_tiny_vae.log",
    benchmark:
        f"{R}/benchmarks/make_tiny_vae.tsv"
    conda:
        "../../environment.yml"
    resources:
        **resources_for("make_tiny_vae"),
    params:
        udit=udit_cmd,
    shell:
        "{params.udit} tiny-vae --out {output:q} --seed 0 > {log:q} 2>&1"


rule extract_latents:
    input:
        images=dataset_images_input,
        vae=dataset_vae_input,
    output:
        f"{R}/data/{{dataset}}/latents/manifest.json",
    log:
        f"{R}/logs/extract_latents/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/extract_latents/{{dataset}}.tsv"
    conda:
        "../../environment.yml"
    resources:
        **resources_for("extract_latents"),
    params:
        udit=udit_cmd,
        ds=dataset_params,
        images=dataset_images,
        out=subpath(output[0], parent=True),
    shell:
        # re-running resumes from the shards already written (a retried job loses nothing)
        "{params.udit} extract-latents --images {params.images:q} --out {params.out:q}"
        " --image-size {params.ds[image_size]:q} --vae {params.ds[vae]:q} > {log:q} 2>&1"


rule make_standin_inception:
    input:
        calibration_images,
    output:
        f"{R}/inception/standin.pth",
    log:
        f"{R}/logs/make_standin_inception.log",
    benchmark:
        f"{R}/benchmarks/make_standin_inception.tsv"
    conda:
        "../../environment.yml"
    resources:
        **resources_for("make_standin_inception"),
    params:
        udit=udit_cmd,
        seed=INCEPTION.get("standin_seed", 0),
        images=images_dir(calibration_dataset()),
        size=DATASETS[calibration_dataset()]["image_size"],
    shell:
        "{params.udit} make-standin-inception --out {output:q} --seed {params.seed:q}"
        " --calibration-images {params.images:q} --image-size {params.size:q} > {log:q} 2>&1"


rule build_reference:
    input:
        images=dataset_images_input,
        weights=inception_input,
    output:
        f"{R}/data/{{dataset}}/reference.npz",
    log:
        f"{R}/logs/build_reference/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/build_reference/{{dataset}}.tsv"
    conda:
        "../../environment.yml"
    resources:
        **resources_for("build_reference"),
    params:
        udit=udit_cmd,
        ds=dataset_params,
        images=dataset_images,
        weights=inception_weights(),
        subset=reference_subset_args,
    shell:
        "{params.udit} build-reference --images {params.images:q} --out {output:q}"
        " --inception-weights {params.weights:q} --image-size {params.ds[image_size]:q}"
        " {params.subset} > {log:q} 2>&1"


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
        config=report_config,
    shell:
        "{params.udit} download --configfile {params.config:q} > {log:q} 2>&1"
