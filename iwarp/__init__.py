"""iwarp: Implicit Warping for Animation with Image Sets (Mallya, Wang, Liu, NeurIPS 2022)."""

from iwarp.explicit_flow import ExplicitFlowBaseline, ExplicitFlowConfig, FlowSourceCache
from iwarp.implicit_warping import ImplicitWarping, ImplicitWarpingConfig, SourceCache
from iwarp.keypoints import KeypointConfig, Keypoints
from iwarp.outputs import ModelOutput

__all__ = [
    "ExplicitFlowBaseline",
    "ExplicitFlowConfig",
    "FlowSourceCache",
    "ImplicitWarping",
    "ImplicitWarpingConfig",
    "KeypointConfig",
    "Keypoints",
    "ModelOutput",
    "SourceCache",
]
__version__ = "0.1.0"
