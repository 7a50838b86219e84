"""iwarp serving: export, .mar packaging, TorchServe handler and process control, canary.

Python API (heavy imports happen inside each module, so importing `serving` is cheap):

    from serving.package import package                      # checkpoint -> iwarp.mar
    from serving.server import start_server, stop_server     # TorchServe on loopback, token auth on
    from serving.client import TorchServeClient              # predict / register source sets
    from serving.rollout import run_canary                   # gated canary -> CanaryVerdict
    from serving.canary import decide, CanaryThresholds, VersionStats, CanaryVerdict
"""
