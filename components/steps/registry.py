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
    """A new version of `model_name` from the run's logged model, alias `challenger`. The answer
    (the version) is waited for while MLflow is down (`answered`: exit code 3 when it does not
    come back). Repeating it is safe: a version this sweep (`iwarp.parent_run_id`) already
    registered from this run is taken, not registered twice."""
    from components.tracking import answered

    def once() -> str:
        import mlflow
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri)
        done = [
            v
            for v in client.search_model_versions(f"name='{model_name}' and run_id='{run_id}'")
            if v.tags.get("iwarp.parent_run_id") == tags.get("iwarp.parent_run_id")
        ]
        if done:
            version = str(max(int(v.version) for v in done))
        else:
            mlflow.set_tracking_uri(tracking_uri)
            version = str(
                mlflow.register_model(
                    f"runs:/{run_id}/model", model_name, tags=tags, await_registration_for=300
                ).version
            )
        client.update_model_version(model_name, version, description=tags.get("iwarp.choice_reason", ""))
        client.set_registered_model_alias(model_name, CHALLENGER, version)
        return version

    version = answered(once, tracking_uri, f"registering {model_name}")
    print(f"registered {model_name} version {version} (alias {CHALLENGER}) from run {run_id}", flush=True)
    return version


class AliasMover:
    def __init__(
        self, tracking_uri: str, model_name: str, version: str | int | None, log: Callable[[str], Any] = print
    ):
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self.uri, self.name, self.log = tracking_uri, model_name, log
        if version is None:  # fall back to whatever the registry already calls the challenger
            version = self._ask(lambda: self._alias_version(CHALLENGER), "reading the challenger alias")
        self.version = str(version) if version is not None else None
        if self.version is None:
            log(
                f"mlflow: no model version of {model_name!r} given for the candidate and no {CHALLENGER!r} alias; "
                "aliases stay as they are"
            )
        else:  # fail early on a wrong name/version, and before serving changes when MLflow is down
            self._ask(lambda: self.client.get_model_version(self.name, self.version), "reading the candidate version")

    def _ask(self, call: Callable[[], Any], what: str) -> Any:
        """Registry calls wait for MLflow with a bounded backoff (exit code 3 after it)."""
        from components.tracking import answered

        return answered(call, self.uri, f"canary: {what}")

    def _alias_version(self, alias: str) -> str | None:
        from mlflow.exceptions import MlflowException

        from components.tracking import transient

        try:
            return str(self.client.get_model_version_by_alias(self.name, alias).version)
        except MlflowException as exc:
            if transient(exc):  # down is not "no such alias"
                raise
            return None

    def mark_challenger(self) -> None:
        if self.version is None:
            return

        def mark() -> None:
            self.client.set_registered_model_alias(self.name, CHALLENGER, self.version)
            self.client.set_model_version_tag(self.name, self.version, "canary_verdict", "running")

        self._ask(mark, "marking the challenger")
        self.log(f"mlflow: {self.name} v{self.version} is {CHALLENGER}")

    def finish(self, verdict: CanaryVerdict) -> None:
        if self.version is None:
            return

        def move() -> str | None:  # each call is safe to repeat
            c = self.client
            c.set_model_version_tag(self.name, self.version, "canary_verdict", verdict.action)
            c.set_model_version_tag(self.name, self.version, "canary_summary", verdict.summary()[:4900])
            if self._alias_version(CHALLENGER) == self.version:
                c.delete_registered_model_alias(self.name, CHALLENGER)
            if verdict.promote:
                c.set_registered_model_alias(self.name, CHAMPION, self.version)
            return self._alias_version(CHAMPION)

        try:
            champion = self._ask(move, "moving the aliases")
            if verdict.promote:
                self.log(f"mlflow: {self.name} v{self.version} is now {CHAMPION}")
            else:
                self.log(f"mlflow: {self.name} v{self.version} rolled back ({CHAMPION} unchanged: v{champion})")
        except Exception as exc:  # noqa: BLE001 - TorchServe already changed; say so loudly, don't hide the verdict
            self.log(
                f"WARNING: the serving decision ({verdict.action}) is applied, but moving MLflow aliases failed: {exc}"
            )
