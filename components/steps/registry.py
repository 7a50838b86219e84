"""The MLflow Model Registry side of a model's life: registering the chosen model as a new
version with the alias `challenger`, and moving aliases after the canary decision.

`challenger` marks the model version under canary evaluation; a promoted candidate becomes
`champion` (and loses `challenger`); a rolled-back one loses `challenger`. Each version also
gets `canary_verdict` / `canary_summary` tags, so the MLflow UI shows why it was (not) promoted.
`AliasMover` reaches `serving.rollout` (the local TorchServe canary) through the
`iwarp.model_registries` entry point, so `serving/` never imports MLflow glue.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from serving.canary import CanaryVerdict

CHAMPION, CHALLENGER = "champion", "challenger"


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


class AliasMover:
    def __init__(
        self, tracking_uri: str, model_name: str, version: str | int | None, log: Callable[[str], Any] = print
    ):
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self.name, self.log = model_name, log
        if version is None:  # fall back to whatever the registry already calls the challenger
            version = self._alias_version(CHALLENGER)
        self.version = str(version) if version is not None else None
        if self.version is None:
            log(
                f"mlflow: no model version of {model_name!r} given for the candidate and no {CHALLENGER!r} alias; "
                "aliases stay as they are"
            )
        else:
            self.client.get_model_version(self.name, self.version)  # fail early on a wrong name/version

    def _alias_version(self, alias: str) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(self.name, alias).version)
        except MlflowException:
            return None

    def mark_challenger(self) -> None:
        if self.version is None:
            return
        self.client.set_registered_model_alias(self.name, CHALLENGER, self.version)
        self.client.set_model_version_tag(self.name, self.version, "canary_verdict", "running")
        self.log(f"mlflow: {self.name} v{self.version} is {CHALLENGER}")

    def finish(self, verdict: CanaryVerdict) -> None:
        if self.version is None:
            return
        try:
            c = self.client
            c.set_model_version_tag(self.name, self.version, "canary_verdict", verdict.action)
            c.set_model_version_tag(self.name, self.version, "canary_summary", verdict.summary()[:4900])
            if self._alias_version(CHALLENGER) == self.version:
                c.delete_registered_model_alias(self.name, CHALLENGER)
            if verdict.promote:
                c.set_registered_model_alias(self.name, CHAMPION, self.version)
                self.log(f"mlflow: {self.name} v{self.version} is now {CHAMPION}")
            else:
                self.log(
                    f"mlflow: {self.name} v{self.version} rolled back "
                    f"({CHAMPION} unchanged: v{self._alias_version(CHAMPION)})"
                )
        except Exception as exc:  # noqa: BLE001 - TorchServe already changed; say so loudly, don't hide the verdict
            self.log(
                f"WARNING: the serving decision ({verdict.action}) is applied, but moving MLflow aliases failed: {exc}"
            )
