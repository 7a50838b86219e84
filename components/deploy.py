"""Serving components: package the chosen checkpoint as a TorchServe `.mar`, then roll it
out as a canary that becomes the default (and MLflow `champion`) only if it passes."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Model, Output

from components.base import IMAGE, SERVING_PACKAGES


@dsl.component(base_image=IMAGE, packages_to_install=SERVING_PACKAGES)
def package_model(checkpoint: Input[Model], model_name: str, version: str, mar: Output[Model]):
    """`serving.package`: exported generator + handler + config -> `<model_name>.mar`,
    versioned like the registry (`<version>.0`)."""
    from components.steps.deploy import package_mar

    info = package_mar(checkpoint.path, model_name, version, mar.path)
    mar.metadata.update(
        {
            "model_name": model_name,
            "torchserve_version": info["version"],
            "registry_version": version,
            "variant": checkpoint.metadata.get("variant"),
        }
    )


@dsl.component(base_image=IMAGE, packages_to_install=SERVING_PACKAGES)
def deploy_canary(
    mar: Input[Model],
    dataset: Input[Dataset],
    model_name: str,
    version: str,
    tracking_uri: str,
    target: str,
    serving_workdir: str,
    image_size: int,
    namespace: str,
    storage_uri: str,
    s3_endpoint_url: str,
    verdict: Output[Markdown],
) -> NamedTuple("Canary", [("promoted", bool), ("default_version", str), ("endpoint", str)]):
    """Serve the new version beside the current default, compare both on held-out cases
    from the test split, then promote (default + MLflow `champion`) or roll back.

    target="torchserve": the TorchServe that `iwarp serve start` runs from `serving_workdir`
    (local runs). target="kserve": the KServe InferenceService in `namespace`, the new
    version uploaded under `storage_uri` (cluster runs).
    """
    from collections import namedtuple

    from components.steps.deploy import CanaryRequest, run_canary_step

    result = run_canary_step(
        CanaryRequest(
            mar=mar.path,
            dataset=dataset.path,
            model_name=model_name,
            version=version,
            tracking_uri=tracking_uri,
            target=target,
            serving_workdir=serving_workdir,
            image_size=image_size,
            namespace=namespace,
            storage_uri=storage_uri,
            s3_endpoint_url=s3_endpoint_url,
        ),
        verdict.path,
    )
    return namedtuple("Canary", ["promoted", "default_version", "endpoint"])(*result)
