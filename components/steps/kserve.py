"""The canary step on a cluster: KServe (Knative mode) InferenceService, driven by
`iwarp deploy kserve` (`deploy.cli`) and decided by the same `serving.canary.decide`
as the local TorchServe canary.

1. Upload the new `.mar` under `<serving_storage_uri>/<registry version>/` and send it
   `CANARY_PERCENT`% of the traffic (`iwarp deploy kserve --canary`); the first version gets
   all of it (nothing to split with).
2. Send the held-out canary cases to both revisions through KServe's tag routing (`prev-` /
   `latest-` host names of the InferenceService's status), measure error rate, latency and
   quality, and decide.
3. Promote (`--promote --report`) or roll back (`--rollback`); MLflow aliases follow.

Needs a cluster: its test (tests/e2e/test_pipeline_kserve.py) runs it against a stand-in kubectl,
a moto S3 server and two stand-in predictor revisions, never a live KServe.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from components.steps.canary_request import CanaryRequest

CANARY_PERCENT = 10
READY_TIMEOUT_S = 900


def revision_client(urls: dict[str, str], model_name: str, timeout: float):
    """`serving.client.TorchServeClient` aimed at KServe revisions: `version` names a revision
    tag, and no token is sent (the cluster config disables TorchServe's token auth; the
    gateway authenticates)."""
    from serving.client import TorchServeClient

    class RevisionClient(TorchServeClient):
        def _request(self, kind: str, method: str, url: str, **kwargs: Any):
            return self.session.request(method, url, timeout=kwargs.pop("timeout", self.timeout), **kwargs)

        def predict_raw(self, payload=None, *, files=None, data=None, version=None, headers=None):
            kwargs: dict[str, Any] = {"headers": headers or {}}
            for key, value in (("json", payload), ("files", files), ("data", data)):
                if value is not None:
                    kwargs[key] = value
            return self._request("inference", "POST", f"{urls[version]}/predictions/{self.model_name}", **kwargs)

    return RevisionClient(handle=None, timeout=timeout, model_name=model_name)


def tagged_urls(isvc: dict[str, Any]) -> dict[str, str]:
    """{'prev': url, 'latest': url} from the InferenceService's predictor traffic status."""
    traffic = isvc.get("status", {}).get("components", {}).get("predictor", {}).get("traffic", [])
    return {t["tag"]: t["url"].rstrip("/") for t in traffic if t.get("tag") and t.get("url")}


def deploy_kserve(namespace: str, *args: str) -> str:
    """`iwarp deploy kserve ...` as a user would run it; returns its output, raises on failure."""
    cmd = [sys.executable, "-m", "deploy", "kserve", "--namespace", namespace, *args]
    print(f"[canary] {' '.join(cmd[2:])}", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    out = (proc.stdout + proc.stderr).strip()
    if out:
        print(out, flush=True)
    if proc.returncode != 0:
        raise RuntimeError(f"`iwarp deploy kserve {' '.join(args)}` failed (exit {proc.returncode}): {out[-2000:]}")
    return out


def canary_on_kserve(req: CanaryRequest, verdict_path: str) -> tuple[bool, str, str]:
    from components.steps.canary_request import build_canary_set, serve_config, write_verdict
    from components.steps.registry import AliasMover
    from deploy.cli import Kubectl
    from deploy.kserve import KServeSettings
    from serving.canary import evidence_repeats
    from serving.canary_set import load_canary_set
    from serving.rollout import evaluate_and_decide

    if not req.storage_uri.startswith("s3://"):
        raise ValueError("serving_target=kserve needs serving_storage_uri=s3://bucket/prefix for the model versions")
    cfg = serve_config(req.model_name)
    settings = KServeSettings(namespace=req.namespace or KServeSettings().namespace, model_name=req.model_name)
    kubectl = Kubectl(settings.namespace)
    first = kubectl.get_isvc(settings.name) is None
    version_uri = f"{req.storage_uri.rstrip('/')}/{req.version}"
    registry = AliasMover(req.tracking_uri, req.model_name, req.version) if req.tracking_uri else None
    if registry:
        registry.mark_challenger()

    deploy_kserve(
        settings.namespace,
        "--canary",
        str(CANARY_PERCENT),
        "--storage-uri",
        version_uri,
        "--mar",
        req.mar,
        "--wait",
        str(READY_TIMEOUT_S),
    )
    isvc = kubectl.get_isvc(settings.name) or {}
    urls = tagged_urls(isvc)
    endpoint = f"{str(isvc.get('status', {}).get('url', '')).rstrip('/')}/predictions/{req.model_name}"
    with tempfile.TemporaryDirectory(prefix="iwarp-canary-") as tmp:
        cases = load_canary_set(build_canary_set(req, Path(tmp) / "canary-set"))
        repeats = evidence_repeats(len(cases), cfg.canary_eval.repeats, cfg.canary)
        client = revision_client(urls, req.model_name, cfg.canary_eval.timeout_s)
        needed = {"latest"} if first else {"prev", "latest"}  # the first revision has all the traffic
        missing = needed - set(urls)
        if missing:
            raise RuntimeError(
                f"InferenceService {settings.name} lacks tagged revision URLs {sorted(missing)} "
                "(is serving.kserve.io/enable-tag-routing on?)"
            )
        verdict, _ = evaluate_and_decide(
            client,
            cases,
            "latest",
            None if first else "prev",
            cfg.canary,
            repeats=repeats,
            progress=False,
            labels={"prev": "serving", "latest": req.version},
        )
        report = Path(tmp) / "canary-report.json"
        report.write_text(json.dumps(verdict.to_dict(), default=str))
        print(verdict.summary(), flush=True)
        if not first:
            deploy_kserve(
                settings.namespace, *(("--promote", "--report", str(report)) if verdict.promote else ("--rollback",))
            )
    if registry:
        registry.finish(verdict)
    default = req.version if verdict.promote else "the previous revision"
    write_verdict(verdict_path, verdict, default, endpoint)
    if first and not verdict.promote:  # there is no earlier revision to send the traffic back to
        raise RuntimeError(
            f"the first version of {settings.name} does not answer the canary cases; it is the only "
            f"revision, so it still receives the traffic: fix it or delete the InferenceService\n" + verdict.summary()
        )
    return verdict.promote, default, endpoint
