"""Every parameter of a fit (:class:`FitConfig`), validated where it is written, and the presets.

``FitConfig()`` is zsfs' default; :meth:`FitConfig.paper` the method exactly as published;
:meth:`FitConfig.fast` its faster variant (docs/fit.md compares them on real data).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from zsfs.devices import DEVICES, PRECISION_CHOICES
from zsfs.errors import (ParameterError, check_at_least, check_choice, check_parameter_type, check_seed,
                         checked_arguments, shown_value)
from zsfs.methods import MAX_OOD_MULTIPLIER, METHOD_CHOICES, PROMPT_CHOICES, UNREAD_BY

SCHEDULE = {"batch_size": 512, "lr": 2e-2, "epochs": 20, "cycle_epochs": 5}
"""zsfs' training schedule: the defaults, and ``--fast``'s replacement for the paper's."""
PAPER_SCHEDULE = {"epochs": 100, "cycle_epochs": 20, "batch_size": 16, "lr": 1e-3}
PAPER_PRESET = {"method": "cycles", "prompts": "single", "accumulate": False, "unique_pseudo_labels": False,
                **PAPER_SCHEDULE}
"""The ``--paper`` preset: the method and training schedule exactly as published."""
FAST_PRESET = {**SCHEDULE, "precision": "auto", "ivf_neighbours": True}
"""The ``--fast`` preset (see docs/fit.md for its accuracy/time trade-off)."""


PARAMETER_TYPES = {kind.__name__: kind for kind in (int, float, str, bool)}
"""FitConfig's field annotations, as the types :func:`zsfs.errors.check_parameter_type` checks."""


@dataclass
class FitConfig:
    """Every parameter of a fit. :meth:`paper` gives the paper-faithful settings."""

    method: str = "balanced"  # "balanced": transductive over the collection; "cycles": the paper's
    k: int = 16  # seeds per class, and candidates examined per class per cycle
    candidates: int = 100  # R: zero-shot candidates per class
    neighbours: int = 5  # CLIP neighbours used to re-rank each candidate
    prompts: str = "ensemble"  # text embeddings: "ensemble" (80 templates) or "single"
    accumulate: bool = True  # train each cycle on everything kept so far (False: the paper)
    unique_pseudo_labels: bool = True  # an image is a candidate of one class only (False: paper)
    epochs: int = SCHEDULE["epochs"]  # on the seeds (cycles method; the balanced one trains only in its cycles)
    cycle_epochs: int = SCHEDULE["cycle_epochs"]  # per self-training cycle (a maximum for the cycles method)
    batch_size: int = SCHEDULE["batch_size"]
    lr: float = SCHEDULE["lr"]
    max_cycles: int = 19
    loss_floor: float = 0.1  # stop when an epoch's training loss falls below this
    ood_multiplier: float = 1.0
    seed: int = 0
    device: str = "cpu"
    precision: str = "fp32"  # "bf16": bf16 products in the neighbour scan (re-scored in fp32) and training;
    #                          "auto": bf16 where the device has bf16 products in hardware, else fp32
    ivf_neighbours: bool = False  # IVF lists for the neighbours even where the store's index is exact
    keep_all_classes: bool = False  # balanced method: never declare a listed class absent

    @classmethod
    def paper(cls, **overrides) -> "FitConfig":
        """The method exactly as published (single prompt, per-cycle sets, duplicates kept)."""
        return cls(**{**PAPER_PRESET, **overrides})

    @classmethod
    def fast(cls, *, paper: bool = False, **overrides) -> "FitConfig":
        """bf16 products where the hardware multiplies bf16, and IVF neighbours; with ``paper=True``
        also zsfs' schedule (larger batches, fewer epochs) in place of the paper's."""
        base = cls.paper if paper else cls
        return base(**{**FAST_PRESET, **overrides})

    @classmethod
    def from_options(cls, *, paper: bool = False, fast: bool = False, **given) -> "FitConfig":
        """A validated config from a preset and the options a user gave (None = not given)."""
        chosen = {name: value for name, value in given.items() if value is not None}
        return cls.fast(paper=paper, **chosen) if fast else cls.paper(**chosen) if paper else cls(**chosen)

    def unread(self, given: dict) -> list[str]:
        """The parameters among ``given`` (None = not given) that this config's method never reads."""
        return [name for name in UNREAD_BY[self.method] if given.get(name) is not None]

    def unread_note(self, names: list[str], readers: str | None = None) -> str:
        """``"NAMES is/are only read by the READERS; this METHOD fit ignores it/them"`` (``readers``:
        the other method, by default named as in Python)."""
        other = "cycles" if self.method == "balanced" else "balanced"
        one = len(names) == 1
        return (f"{', '.join(names)} {'is' if one else 'are'} only read by the {readers or other + ' method'}; "
                f"this {self.method} fit ignores {'it' if one else 'them'}")

    def __post_init__(self) -> None:
        self.validate()  # a bad value is refused where it is written, not when a fit starts

    def validate(self) -> None:
        """ParameterError naming the first field with a value no fit takes."""
        for spec in fields(self):  # annotated "int", "float", "str" or "bool" (a string: annotations are postponed)
            value = getattr(self, spec.name)
            check_parameter_type(spec.name, value, PARAMETER_TYPES[spec.type])
            if isinstance(value, np.generic):  # seed=np.int64(3): torch's generator takes Python numbers only
                setattr(self, spec.name, value.item())
        for name in ("k", "candidates", "neighbours", "epochs", "batch_size"):
            check_at_least(name, getattr(self, name), 1)
        for name in ("cycle_epochs", "max_cycles"):
            check_at_least(name, getattr(self, name), 0)
        if self.method == "balanced" and self.cycle_epochs < 1:
            raise ParameterError("{cycle_epochs} must be at least 1 with the balanced method (it trains only in its "
                                 f"cycles), not {self.cycle_epochs}")
        if self.k > self.candidates:
            raise ParameterError(f"{{k}} {self.k} is larger than {{candidates}} {self.candidates}: the seeds are "
                                 f"taken from the candidates, so use {{k}} <= {{candidates}} (or raise {{candidates}})")
        # a device is named here; whether this machine has it is checked when a fit starts
        for name, choices in (("method", METHOD_CHOICES), ("prompts", PROMPT_CHOICES), ("precision", PRECISION_CHOICES),
                              ("device", DEVICES)):
            check_choice(name, getattr(self, name), choices)
        for name in ("lr", "loss_floor", "ood_multiplier"):
            if not math.isfinite(getattr(self, name)):
                raise ParameterError(f"{{{name}}} must be a finite number, not {getattr(self, name)}")
        if not self.lr > 0:
            raise ParameterError(f"{{lr}} must be > 0, not {self.lr}")
        for name in ("loss_floor", "ood_multiplier"):  # as the CLI's ranges say
            if getattr(self, name) < 0:
                raise ParameterError(f"{{{name}}} must be at least 0, not {getattr(self, name)}")
        if self.ood_multiplier > MAX_OOD_MULTIPLIER:
            raise ParameterError(f"{{ood_multiplier}} must be at most {MAX_OOD_MULTIPLIER:g}, not {self.ood_multiplier}")
        check_seed(self.seed)


FitConfig.__init__ = checked_arguments(FitConfig.__init__)  # FitConfig(kk=3): a ParameterError, as fit(kk=3)


def check_fit_config(name: str, value: object) -> None:
    """ParameterError unless ``value`` is a :class:`FitConfig` (a dict or None failed inside)."""
    if not isinstance(value, FitConfig):
        raise ParameterError(f"{{{name}}} must be a zsfs.FitConfig, not {shown_value(value)}")
