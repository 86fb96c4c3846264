"""The hidden-state hallucination probe: a logistic regression from one layer's state to risk."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, Field, PrivateAttr

from guard.calibration import GuardCalibration
from guard.config import GuardConfig

PROBE_FILE = "guard_probe.json"
CALIBRATION_FILE = "guard_calibration.json"


class ProbeFit(BaseModel):
    """How a probe was made and how well it separates, for the record shipped with it."""

    model: str
    fit_lines: tuple[int, int]
    select_lines: tuple[int, int]
    answers: int
    tokens: int
    auroc: dict[str, float] = Field(
        default_factory=dict, description="Answer-level AUROC on the selection lines, by score."
    )
    layer_auroc: dict[int, float] = Field(
        default_factory=dict,
        description="5-fold answer-level AUROC on the fit lines at each layer swept (best C).",
    )
    c: float | None = Field(None, description="Inverse L2 strength chosen with the layer.")


class HallucinationProbe(BaseModel):
    """P(unsupported) of a token from its state at `layer`: standardise, then a logistic model.

    Stored as plain numbers (a few KiB of JSON), so loading needs neither pickle nor sklearn;
    guardfit.probe_fit fits one.
    """

    layer: int
    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float
    fit: ProbeFit | None = None
    _weights_on: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = PrivateAttr(None)

    def risk(self, states: torch.Tensor) -> torch.Tensor:
        """P(unsupported) of each state [..., d] (float32 out)."""
        mean, scale, coef = self._weights(states.device)
        logits = ((states.float() - mean) / scale) @ coef + self.intercept
        return torch.sigmoid(logits)

    def risk_numpy(self, states: np.ndarray) -> np.ndarray:
        """P(unsupported) of each row of a [N, d] array."""
        z = (states.astype(np.float64) - np.asarray(self.mean)) / np.asarray(self.scale)
        return 1.0 / (1.0 + np.exp(-(z @ np.asarray(self.coef) + self.intercept)))

    def _weights(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The standardisation and weights as float32 tensors on `device`, made once."""
        if self._weights_on is None or self._weights_on[0].device != device:
            mean, scale, coef = (
                torch.tensor(v, dtype=torch.float32, device=device)
                for v in (self.mean, self.scale, self.coef)
            )
            self._weights_on = (mean, scale, coef)
        return self._weights_on

    def save(self, path: Path) -> None:
        """Write the probe as JSON."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.model_dump(), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> HallucinationProbe:
        """Read a probe written by `save`."""
        return cls.model_validate_json(path.read_text())


PROBES_DIR = Path(__file__).parent / "probes"


def find_guard_dir(model_dir: Path, model_name: str) -> Path | None:
    """Where a model's probe lives: its own folder, else the probe committed for its name."""
    for directory in (model_dir, PROBES_DIR / model_name):
        if (directory / PROBE_FILE).exists():
            return directory
    return None


@dataclass(frozen=True)
class GuardAssets:
    """What a model's guard directory holds: its probe and, if calibrated, its thresholds."""

    directory: Path
    probe: HallucinationProbe
    calibration: GuardCalibration | None

    @classmethod
    def load(cls, directory: Path) -> GuardAssets:
        """Read the probe (required) and the calibration (optional) from a directory."""
        calibration_path = directory / CALIBRATION_FILE
        calibration = GuardCalibration.load(calibration_path) if calibration_path.exists() else None
        return cls(directory, HallucinationProbe.load(directory / PROBE_FILE), calibration)

    def defaults(self, enabled: bool) -> GuardConfig:
        """The server's guard defaults for this model: probe scores, calibrated thresholds."""
        options = self.calibration.guard_options() if self.calibration else {}
        return GuardConfig(enabled=enabled, token_score="probe", **options)
