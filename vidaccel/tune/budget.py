"""The quality budget of a tuning run: ``psnr=30``, ``ssim=0.95``, ``adherence-drop=0.02`` (or several at once)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

__all__ = ["Budget", "BUDGET_KEYS", "check_budget_checkable", "adherence_available"]

#: Budget terms: name on the command line → (field, unit of one margin step, description).
BUDGET_KEYS = {
    "psnr": ("psnr", 1.0, "mean PSNR against the unaccelerated output, dB, at least"),
    "ssim": ("ssim", 0.01, "mean SSIM against the unaccelerated output, at least"),
    "adherence-drop": ("adherence_drop", 0.01, "drop of the mean shapes adherence score, at most"),
}


@dataclass(frozen=True)
class Budget:
    """Quality every accepted configuration keeps, against the unaccelerated pipeline on the same prompts and seeds.

    Args:
        psnr: minimum mean PSNR in dB (identical runs count as 100 dB, as in ``vidaccel bench``).
        ssim: minimum mean SSIM, in (0, 1].
        adherence_drop: maximum drop of the mean shapes-world adherence score (embedded model only).

    At least one term is required; all given terms must hold.
    """

    psnr: float | None = None
    ssim: float | None = None
    adherence_drop: float | None = None

    def __post_init__(self):
        def number(name, value):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value)):
                raise ValueError(f"budget {name}={value!r} is not allowed: it must be a finite number")

        for key, (field, _, _) in BUDGET_KEYS.items():
            number(key, getattr(self, field))
        if self.psnr is None and self.ssim is None and self.adherence_drop is None:
            raise ValueError("budget is empty: give at least one of "
                             + ", ".join(f"{k}=... ({d})" for k, (_, _, d) in BUDGET_KEYS.items()))
        if self.psnr is not None and not 0 < self.psnr <= 100:
            raise ValueError(f"budget psnr={self.psnr!r} is not allowed: it must be in (0, 100] dB "
                             "(identical outputs count as 100 dB)")
        if self.ssim is not None and not 0 < self.ssim <= 1:
            raise ValueError(f"budget ssim={self.ssim!r} is not allowed: it must be in (0, 1]")
        if self.adherence_drop is not None and not 0 <= self.adherence_drop < 1:
            raise ValueError(f"budget adherence-drop={self.adherence_drop!r} is not allowed: it must be in [0, 1)")

    @classmethod
    def parse(cls, value: Any) -> "Budget":
        """A :class:`Budget` from itself, a dict (``{"psnr": 30}``) or text (``"psnr=30"``, ``"psnr=30,ssim=0.95"``)."""
        if isinstance(value, Budget):
            return value
        if isinstance(value, Mapping):
            items = list(value.items())
        elif isinstance(value, str):
            items = []
            for part in [p.strip() for p in value.split(",")]:
                key, sep, text = part.partition("=")
                if not sep or not key.strip() or not text.strip():
                    raise ValueError(f"budget={value!r} is not allowed: write NAME=VALUE, e.g. psnr=30, ssim=0.95 or "
                                     "adherence-drop=0.02 (several joined by commas)")
                try:
                    number = float(text)
                except ValueError:
                    raise ValueError(f"budget {key.strip()}={text.strip()!r} is not a number") from None
                items.append((key.strip(), number))
        else:
            raise ValueError(f"budget={value!r} is not allowed: give text such as 'psnr=30', a dict or a Budget")
        fields: dict[str, float] = {}
        for key, number in items:
            if key not in BUDGET_KEYS:
                raise ValueError(f"budget {key!r} is not allowed; allowed: {', '.join(BUDGET_KEYS)}")
            field = BUDGET_KEYS[key][0]
            if field in fields:
                raise ValueError(f"budget {key!r} is given twice")
            fields[field] = number
        return cls(**fields)

    def terms(self) -> list[tuple[str, str, float]]:
        """``(key, field, limit)`` of every given term."""
        return [(k, f, getattr(self, f)) for k, (f, _, _) in BUDGET_KEYS.items() if getattr(self, f) is not None]

    def to_json(self) -> dict:
        return {key: limit for key, _, limit in self.terms()}

    def describe(self) -> str:
        parts = []
        for key, _, limit in self.terms():
            parts.append({"psnr": f"PSNR >= {limit:g} dB", "ssim": f"SSIM >= {limit:g}",
                          "adherence-drop": f"adherence drop <= {limit:g}"}[key])
        return ", ".join(parts)

    @property
    def needs_adherence(self) -> bool:
        return self.adherence_drop is not None

    def margin(self, metrics: Mapping[str, float | None]) -> float:
        """How far ``metrics`` clear the budget, in steps of 1 dB / 0.01 SSIM / 0.01 adherence (worst term).

        ``metrics`` has ``psnr``, ``ssim`` and ``adherence_drop``; a missing one the budget needs gives ``-inf``.
        """
        worst = math.inf
        for key, field, limit in self.terms():
            value = metrics.get(field)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                return -math.inf
            unit = BUDGET_KEYS[key][1]
            m = (limit - value) / unit if field == "adherence_drop" else (value - limit) / unit
            worst = min(worst, m)
        return worst

    def met(self, metrics: Mapping[str, float | None]) -> bool:
        return self.margin(metrics) >= 0


def adherence_available(pipe, prompts: Sequence[str]) -> str | None:
    """``None`` when the shapes adherence scorer can score ``pipe``'s videos of ``prompts``, else why not."""
    name = getattr(pipe, "vidaccel_model", {}).get("name")
    if name != "shapes-t2v":
        return (f"adherence is scored by the shapes scorer (vidaccel.eval), which only knows the embedded "
                f"shapes-t2v model's world; this model is {name or type(pipe).__name__!r}")
    from ..models.shapes import parse_prompt

    for p in prompts:
        try:
            parse_prompt(p)
        except ValueError:
            return f"the shapes scorer cannot score prompt {p!r}: it is not in the embedded model's grammar"
    return None


def check_budget_checkable(budget: Budget, pipe, prompts: Sequence[str]) -> None:
    """Raise ``ValueError`` when a term of ``budget`` cannot be measured on ``pipe`` with ``prompts``."""
    if budget.needs_adherence:
        why = adherence_available(pipe, prompts)
        if why is not None:
            raise ValueError(f"budget adherence-drop={budget.adherence_drop:g} cannot be checked: {why}. Use a "
                             "psnr= or ssim= budget, which any model can be held to")
