"""Data components: versioned preprocessing with DVC, Great Expectations validation, and
the gate that stops the run on bad data.

Validation and the gate are two steps on purpose: on a cluster, KFP uploads a step's
output artifacts only when the step succeeds, so the step that writes the Data Docs must
succeed for people to read them; the gate right after it fails the run.
"""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Output

from components.base import DATA_PACKAGES, IMAGE


@dsl.component(base_image=IMAGE, packages_to_install=DATA_PACKAGES)
def preprocess_data(
    raw_data: str,
    dvc_remote: str,
    s3_endpoint_url: str,
    workspace: str,
    image_size: int,
    dataset: Output[Dataset],
) -> str:
    """`dvc pull` -> `dvc repro` (iwarp data prepare: crop, resize, split, manifest) ->
    `dvc push`; passes the prepared dataset on and returns its data version (the DVC hash
    of the prepared folder)."""
    from components.data import run_preprocess

    version = run_preprocess(raw_data, dvc_remote, s3_endpoint_url, workspace, image_size, dataset.path)
    dataset.metadata.update({"data_version": version, "dvc_remote": dvc_remote, "raw_data": raw_data})
    return version


@dsl.component(base_image=IMAGE, packages_to_install=DATA_PACKAGES)
def validate_data(dataset: Input[Dataset], data_docs: Output[HTML], validation: Output[Artifact]) -> bool:
    """Great Expectations suite over the manifest and sampled frames; Data Docs (HTML) and
    the result JSON are written whether or not the data passes. Returns success."""
    from components.data import run_validation

    return run_validation(dataset.path, data_docs.path, validation.path)


@dsl.component(base_image=IMAGE, packages_to_install=[])
def data_gate(validation: Input[Artifact]):
    """Fail the run when validation failed, naming the failing expectations and videos."""
    from components.data import check_gate

    check_gate(validation.path)
