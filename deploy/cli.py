"""`iwarp deploy`: roll a model version out on Kubernetes (KServe) and check manifests offline.

    iwarp deploy kserve --canary 10 --storage-uri s3://b/iwarp/3 [--mar model_store/iwarp.mar]
    iwarp deploy kserve --advance --report canary.json     # 10 -> 50 -> 100, or 0 on a failed verdict
    iwarp deploy kserve --promote --report canary.json     # only if the verdict says promote
    iwarp deploy kserve --rollback
    iwarp deploy validate k8s/overlays/prod k8s/training   # offline, strict, like an API server

The verdict comes from `serving.canary.decide` on the report's baseline/candidate statistics,
i.e. the same rule the local TorchServe canary applies. With a reachable cluster the patches
are applied with kubectl; `--dry-run` contacts nothing and `--out DIR` writes the manifests
and patches for review or GitOps.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from iwarp.errors import InputError, IwarpError, ServiceUnavailable


class DeployError(IwarpError, RuntimeError):
    """A rollout step that cannot go ahead; the message says why and what to do."""


class DeployInputError(InputError, DeployError):
    """A missing or malformed report, or options that do not go together (exit 2)."""


class ClusterUnreachable(ServiceUnavailable, DeployError):
    """No Kubernetes API server answers (exit 3)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    deploy = subparsers.add_parser("deploy", help="deploy to Kubernetes (KServe) and validate manifests")
    sub = deploy.add_subparsers(dest="deploy_command", required=True, metavar="TARGET")

    k = sub.add_parser(
        "kserve",
        help="create/patch the KServe InferenceService: canary, advance, promote, rollback",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = k.add_mutually_exclusive_group(required=True)
    mode.add_argument("--canary", type=int, metavar="PERCENT", help="serve --storage-uri to PERCENT%% of traffic")
    mode.add_argument("--advance", action="store_true", help="next traffic step (10/50/100) if --report passes, else 0")
    mode.add_argument("--promote", action="store_true", help="give the canary 100%% (needs a passing --report)")
    mode.add_argument("--rollback", action="store_true", help="send all traffic back to the previous revision")
    k.add_argument("--storage-uri", help="s3://bucket/prefix of the model version (config/ + model-store/)")
    k.add_argument("--mar", type=Path, help="upload this .mar (+ config.properties) to --storage-uri first")
    k.add_argument("--report", type=Path, help="canary report JSON (CanaryVerdict.to_dict()) to decide from")
    k.add_argument("--thresholds", type=Path, help="canary thresholds YAML (default: serving/serve.yaml)")
    k.add_argument("--force", action="store_true", help="promote without a passing report")
    k.add_argument("--name", default=None, help="InferenceService name (default iwarp)")
    k.add_argument("--namespace", "-n", default=None, help="namespace (default iwarp)")
    k.add_argument("--gpus", type=int, default=None, help="GPUs per predictor replica (default 1; 0 for CPU)")
    k.add_argument("--cpu", default=None, help="CPU per replica (requests = limits)")
    k.add_argument("--memory", default=None, help="memory per replica (requests = limits)")
    k.add_argument("--context", default=None, help="kubectl context")
    k.add_argument("--dry-run", action="store_true", help="contact no cluster and no S3; print/write only")
    k.add_argument("--out", type=Path, help="write inferenceservice.yaml / patch.json / config.properties here")
    k.add_argument("--wait", type=int, default=0, metavar="SECONDS", help="wait for the InferenceService to be Ready")
    k.set_defaults(func=_cmd_kserve)

    v = sub.add_parser("validate", help="validate kustomizations / YAML offline against strict schemas")
    v.add_argument("paths", nargs="+", type=Path, help="kustomization directories or YAML files")
    v.add_argument(
        "--k8s-version",
        action="append",
        dest="k8s_versions",
        help="Kubernetes version(s) to check built-in kinds against (default: 1.32 and the newest)",
    )
    v.set_defaults(func=_cmd_validate)


# --------------------------------------------------------------------------- validate


def _cmd_validate(args: argparse.Namespace) -> int:
    from deploy import k8s_validate as kv

    versions = args.k8s_versions or [kv.MIN_K8S_VERSION, kv.latest_k8s_version()]
    findings = kv.validate_paths(args.paths, versions)  # ManifestError: exit 2 (iwarp.errors)
    for finding in findings:
        print(finding)
    if findings:
        print(f"{len(findings)} problem(s)", file=sys.stderr)
        return 1
    print(f"valid: {', '.join(map(str, args.paths))} (Kubernetes {', '.join(versions)}, strict)")
    return 0


# --------------------------------------------------------------------------- kserve


def verdict_from_report(report: Path, thresholds: Path | None = None):
    """Re-decide from the report's statistics with our thresholds: the same `decide` the local
    canary ran, so a report cannot promote what the rule rejects."""
    from serving.canary import VersionStats, decide
    from serving.config import load_thresholds

    try:
        data = json.loads(Path(report).read_text())
        baseline = VersionStats(**data["baseline"]) if data["baseline"] is not None else None  # first deployment
        candidate = VersionStats(**data["candidate"])
    except FileNotFoundError as exc:
        raise DeployInputError(f"canary report not found: {report}") from exc
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DeployInputError(
            f"{report} is not a canary report (JSON with 'baseline' and 'candidate' statistics): {exc}"
        ) from exc
    verdict = decide(baseline, candidate, load_thresholds(thresholds))
    if "promote" in data and bool(data["promote"]) != verdict.promote:
        print(
            f"note: {report} says {'promote' if data['promote'] else 'rollback'}, the current thresholds "
            f"say {verdict.action}; going with the thresholds",
            file=sys.stderr,
        )
    return verdict


class Kubectl:
    """Thin kubectl wrapper; every cluster call of `iwarp deploy kserve` goes through `run`."""

    def __init__(self, namespace: str, context: str | None = None):
        binary = shutil.which("kubectl")
        if binary is None:
            raise DeployError("kubectl not found on PATH (use --dry-run --out DIR to write the changes instead)")
        self.base = [binary] + (["--context", context] if context else [])
        self.namespace = namespace

    def run(self, args: list[str], stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.base + args, input=stdin, capture_output=True, text=True, check=False)
        if check and proc.returncode != 0:
            raise DeployError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def reachable(self) -> None:
        proc = self.run(["version", "--request-timeout=10s", "-o", "json"], check=False)
        if proc.returncode != 0 or "serverVersion" not in proc.stdout:
            raise ClusterUnreachable(
                "no Kubernetes cluster reachable with the current kubeconfig "
                f"({proc.stderr.strip() or 'no server version'}); use --dry-run --out DIR to write the changes instead"
            )

    def get_isvc(self, name: str) -> dict[str, Any] | None:
        proc = self.run(["get", "inferenceservice", name, "-n", self.namespace, "-o", "json"], check=False)
        if proc.returncode == 0:
            return json.loads(proc.stdout)
        if "NotFound" in proc.stderr or "not found" in proc.stderr:
            return None
        raise DeployError(f"reading inferenceservice {self.namespace}/{name} failed: {proc.stderr.strip()}")

    def create(self, manifest: dict[str, Any]) -> None:
        self.run(["apply", "-f", "-"], stdin=json.dumps(manifest))

    def patch(self, name: str, patch: dict[str, Any]) -> None:
        self.run(["patch", "inferenceservice", name, "-n", self.namespace, "--type", "merge", "-p", json.dumps(patch)])

    def wait_ready(self, name: str, seconds: int) -> None:
        self.run(
            ["wait", "--for=condition=Ready", f"inferenceservice/{name}", "-n", self.namespace, f"--timeout={seconds}s"]
        )


def _settings(args: argparse.Namespace):
    from deploy.kserve import KServeSettings

    s = KServeSettings()
    for attr, value in (
        ("name", args.name),
        ("namespace", args.namespace),
        ("gpus", args.gpus),
        ("cpu", args.cpu),
        ("memory", args.memory),
    ):
        if value is not None:
            setattr(s, attr, value)
    if s.gpus < 0:
        raise DeployInputError("--gpus must be >= 0")
    return s


def _write(out: Path | None, name: str, text: str) -> None:
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(text)
    print(f"wrote {out / name}")


def _validate_offline(obj: dict[str, Any]) -> None:
    """Schema-check what we are about to hand to the API server, when the schema is at hand
    (scripts/k8s-deps.sh); a live API server validates anyway."""
    from deploy import k8s_validate as kv

    try:
        findings = kv.validate_object(obj)
    except kv.ManifestError as exc:
        print(f"note: offline schema check skipped ({exc})", file=sys.stderr)
        return
    if findings:
        raise DeployError("rendered InferenceService is invalid:\n" + "\n".join(map(str, findings)))


def plan_kserve(args: argparse.Namespace, live: dict[str, Any] | None, settings) -> dict[str, Any]:
    """Decide what to send, from the mode, the report's verdict and the live object (None:
    absent or unknown under --dry-run). Returns {'action', 'patch'|'manifest', 'message'}."""
    from deploy import kserve
    from serving.canary import next_traffic_percent

    verdict = verdict_from_report(args.report, args.thresholds) if args.report else None
    if verdict is not None:
        print(verdict.summary())

    if args.canary is not None:
        if not args.storage_uri:
            raise DeployInputError("--canary needs --storage-uri (the new model version)")
        kserve.check_percent(args.canary)
        if verdict is not None and not verdict.promote:
            raise DeployError("the canary report says roll back; not sending traffic to this candidate")
        manifest = kserve.render_inference_service(args.storage_uri, settings, canary_percent=args.canary)
        if live is None and not args.dry_run:
            # Nothing serves yet, so there is nothing to split traffic with: the first version
            # takes all of it.
            manifest = kserve.render_inference_service(args.storage_uri, settings)
            return {
                "action": "create",
                "manifest": manifest,
                "message": "no InferenceService yet: created it at 100% (nothing to compare against)",
            }
        patch = kserve.canary_patch(args.storage_uri, args.canary)
        return {
            "action": "patch",
            "patch": patch,
            "manifest": manifest,
            "message": f"canary: {args.storage_uri} gets {args.canary}% of traffic",
        }

    if args.rollback:
        return {
            "action": "patch",
            "patch": kserve.rollback_patch(),
            "message": "rollback: 100% back on the previously rolled-out revision",
        }

    current = None if live is None else live.get("spec", {}).get("predictor", {}).get("canaryTrafficPercent")
    if args.promote:
        if verdict is None and not args.force:
            raise DeployInputError("--promote needs --report with a passing canary verdict (or --force)")
        if verdict is not None and not verdict.promote and not args.force:
            raise DeployError("the canary report says roll back; refusing to promote (use --rollback)")
        return {
            "action": "patch",
            "patch": kserve.promote_patch(),
            "message": "promote: the canary revision takes 100%",
        }

    # --advance
    if verdict is None:
        raise DeployInputError("--advance needs --report")
    if live is None and not args.dry_run:
        raise DeployError(f"no InferenceService {settings.namespace}/{settings.name} to advance")
    now = int(current) if current is not None else 0
    target = next_traffic_percent(verdict, now)
    if target == 0:
        return {
            "action": "patch",
            "patch": kserve.rollback_patch(),
            "message": f"advance: verdict {verdict.action}, canary {now}% -> 0%",
        }
    return {"action": "patch", "patch": kserve.traffic_patch(target), "message": f"advance: canary {now}% -> {target}%"}


def _cmd_kserve(args: argparse.Namespace) -> int:
    from deploy import kserve

    try:
        settings = _settings(args)
        kubectl = None
        live = None
        if not args.dry_run:
            kubectl = Kubectl(settings.namespace, args.context)
            kubectl.reachable()
            live = kubectl.get_isvc(settings.name)
            if live is None and (args.promote or args.rollback):
                raise DeployError(f"no InferenceService {settings.namespace}/{settings.name} to change")
            idle = live is not None and live["spec"]["predictor"].get("canaryTrafficPercent") is None
            if idle and (args.promote or args.advance):
                print(f"{settings.namespace}/{settings.name}: no canary in progress, nothing to promote or advance")
                return 0
        plan = plan_kserve(args, live, settings)

        if args.mar is not None:
            if not args.storage_uri:
                raise DeployInputError("--mar needs --storage-uri")
            _write(args.out, "config.properties", kserve.render_config_properties(settings))
            if args.dry_run:
                print(f"dry run: would upload {args.mar} and config.properties to {args.storage_uri}")
            else:
                for uri in kserve.upload_model_layout(args.mar, args.storage_uri, settings):
                    print(f"uploaded {uri}")

        target = plan.get("manifest")
        if "patch" in plan:
            preview = live if live is not None else target
            if preview is not None:
                target = kserve.apply_merge_patch(preview, plan["patch"])
        if target is not None:
            _validate_offline({k: v for k, v in target.items() if k != "status"})
            if plan.get("manifest") is not None:
                import yaml

                _write(args.out, "inferenceservice.yaml", yaml.safe_dump(plan["manifest"], sort_keys=False))
        if "patch" in plan:
            _write(args.out, "patch.json", json.dumps(plan["patch"], indent=2) + "\n")
            cmd = (
                f"kubectl -n {settings.namespace} patch inferenceservice {settings.name} "
                f"--type merge -p '{json.dumps(plan['patch'])}'"
            )
        else:
            cmd = "kubectl apply -f inferenceservice.yaml"

        if args.dry_run:
            print(f"dry run: {plan['message']}\n  {cmd}")
            if args.out is None:
                print(json.dumps(plan.get("patch", plan.get("manifest")), indent=2))
            return 0

        assert kubectl is not None
        if plan["action"] == "create":
            kubectl.create(plan["manifest"])
        else:
            kubectl.patch(settings.name, plan["patch"])
        print(f"{settings.namespace}/{settings.name}: {plan['message']}")
        if args.wait:
            kubectl.wait_ready(settings.name, args.wait)
        state = kubectl.get_isvc(settings.name)
        if state is not None:
            print(json.dumps(kserve.current_traffic(state), indent=2))
        return 0
    except ValueError as exc:  # settings that cannot work; other errors carry their own exit code
        if isinstance(exc, IwarpError):
            raise
        raise InputError(str(exc)) from exc
