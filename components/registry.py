"""Registering the chosen model in the MLflow Model Registry as a new version of `iwarp`
with the alias `challenger` (the canary step may later move `champion` to it)."""

from typing import NamedTuple

from kfp import dsl

from components.base import IMAGE, REGISTRY_PACKAGES


@dsl.component(base_image=IMAGE, packages_to_install=REGISTRY_PACKAGES)
def register_model(
    tracking_uri: str,
    model_name: str,
    run_id: str,
    variant: str,
    reason: str,
    data_version: str,
    parent_run_id: str,
) -> NamedTuple("Registered", [("version", str), ("model_name", str), ("model_uri", str)]):
    """Register the MLflow model logged by training run `run_id` as a new version of
    `model_name` and point the `challenger` alias at it."""
    from collections import namedtuple

    from components.steps.registry import register

    version = register(
        tracking_uri,
        model_name,
        run_id,
        {
            "iwarp.variant": variant,
            "iwarp.choice_reason": reason,
            "iwarp.data_version": data_version,
            "iwarp.parent_run_id": parent_run_id,
        },
    )
    return namedtuple("Registered", ["version", "model_name", "model_uri"])(
        version, model_name, f"models:/{model_name}/{version}"
    )
