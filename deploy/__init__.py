"""Cluster layer: KServe InferenceService rendering, `kubectl` (`iwarp deploy ...`) and offline
validation of Kubernetes manifests (TrainJobs, RBAC, NetworkPolicies). Imports `iwarp` and `serving`
only; MLflow and KFP stay in `components/`."""
