# Data stage: toy images, the tiny VAE, latents (extracted once per dataset and shared by
# every training node), the stand-in Inception and the reference statistics.


rule make_toy_data:
    output:
        directory(f"{R}/data/{{dataset}}/images"),
    log:
        f"{R}/logs/make_toy_data/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/make_toy_data/{{dataset}}.tsv"
    params:
        udit=udit_cmd,
        ds=dataset_params,
    resources:
        **resources_for("make_toy_data"),
    conda:
        "../../environment.yml"
    shell:
        "{params.udit} toy-data --out {output} --num-classes {params.ds[classes]}"
        " --per-class {params.ds[per_class]} --size {params.ds[size]} --seed {params.ds[seed]} > {log} 2>&1"


rule make_tiny_vae:
    output:
        directory(f"{R}/data/tiny-vae"),
    log:
        f"{R}/logs/make_tiny_vae.log",
    benchmark:
        f"{R}/benchmarks/make_tiny_vae.tsv"
    params:
        udit=udit_cmd,
    resources:
        **resources_for("make_tiny_vae"),
    conda:
        "../../environment.yml"
    shell:
        "{params.udit} tiny-vae --out {output} --seed 0 > {log} 2>&1"


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
    params:
        udit=udit_cmd,
        ds=dataset_params,
        images=dataset_images,
        out=subpath(output[0], parent=True),
    resources:
        **resources_for("extract_latents"),
    conda:
        "../../environment.yml"
    shell:
        # re-running resumes from the shards already written (a retried job loses nothing)
        "{params.udit} extract-latents --images {params.images} --out {params.out}"
        " --image-size {params.ds[size]} --vae {params.ds[vae]} > {log} 2>&1"


rule make_standin_inception:
    input:
        calibration_images,
    output:
        f"{R}/inception/standin.pth",
    log:
        f"{R}/logs/make_standin_inception.log",
    benchmark:
        f"{R}/benchmarks/make_standin_inception.tsv"
    params:
        udit=udit_cmd,
        seed=INCEPTION.get("standin_seed", 0),
        images=images_dir(calibration_dataset()),
        size=DATASETS[calibration_dataset()]["image_size"],
    resources:
        **resources_for("make_standin_inception"),
    conda:
        "../../environment.yml"
    shell:
        "{params.udit} make-standin-inception --out {output} --seed {params.seed}"
        " --calibration-images {params.images} --image-size {params.size} > {log} 2>&1"


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
    params:
        udit=udit_cmd,
        ds=dataset_params,
        images=dataset_images,
        weights=inception_weights(),
    resources:
        **resources_for("build_reference"),
    conda:
        "../../environment.yml"
    shell:
        "{params.udit} build-reference --images {params.images} --out {output}"
        " --inception-weights {params.weights} --image-size {params.ds[size]}"
        " $([ -n '{params.ds[num_images]}' ] && echo --num-images {params.ds[num_images]}) > {log} 2>&1"
