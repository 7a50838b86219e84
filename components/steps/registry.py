"""Registering the chosen model: a new version of the MLflow registered model with the
alias `challenger` (the canary step may move `champion` to it)."""

CHALLENGER = "challenger"
CHAMPION = "champion"


def register(tracking_uri: str, model_name: str, run_id: str, tags: dict[str, str]) -> str:
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    mv = mlflow.register_model(f"runs:/{run_id}/model", model_name, tags=tags, await_registration_for=300)
    client.update_model_version(model_name, mv.version, description=tags.get("iwarp.choice_reason", ""))
    client.set_registered_model_alias(model_name, CHALLENGER, mv.version)
    print(f"registered {model_name} version {mv.version} (alias {CHALLENGER}) from run {run_id}", flush=True)
    return str(mv.version)
