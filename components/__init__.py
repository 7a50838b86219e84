"""KFP v2 components of the iwarp pipeline, one per step, each a thin wrapper over
`iwarp` / `serving` code:

| module | components |
|---|---|
| `components.data` | `preprocess_data` (DVC pull/repro/push), `validate_data` (GX + Data Docs), `data_gate` |
| `components.training` | `open_parent_run`, `train_model` (torchrun here, a TrainJob on a cluster), `evaluate_model` |
| `components.report` | `compare_ablations` (table + chart to MLflow and Markdown/HTML artifacts, picks the model) |
| `components.registry` | `register_model` (MLflow registry `iwarp`, alias `challenger`) |
| `components.deploy` | `package_model` (`.mar`), `deploy_canary` (canary; `champion` moves only on a pass) |

Component bodies run in a fresh process (a subprocess locally, a pod on a cluster), so
they import what they use inside the function: the wiring they call lives in
`components.steps` (plain functions, importable inside a task), the sweep's rules in
`components.ablation`. `components.tracking` is the training loop's MLflow logger (journaled,
delivered by a background thread, never blocking training) and `iwarp track sync`'s upload;
`components.track_cli` registers that command.
"""
