"""The iwarp Kubeflow pipeline: definition (`pipelines.pipeline`), local services
(`pipelines.services`), the local run driver (`pipelines.local_run`) and the
`iwarp pipeline` command line (`pipelines.cli`)."""
