"""Distribution-free calibration of the vision gate threshold (SPEC §3).

numpy/scipy only, so the service can read ``calibration.json`` without the training stack.
"""

from calibration.bounds import clopper_pearson_upper, clopper_pearson_upper_many
from calibration.conformal import RiskCurve, activation_rate, calibrate_threshold, default_grid, risk_curve
from calibration.result import HARM_DEFINITIONS, METHODS, CalibrationResult, Method

__all__ = [
    "HARM_DEFINITIONS",
    "METHODS",
    "CalibrationResult",
    "Method",
    "RiskCurve",
    "activation_rate",
    "calibrate_threshold",
    "clopper_pearson_upper",
    "clopper_pearson_upper_many",
    "default_grid",
    "risk_curve",
]
