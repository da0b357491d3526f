"""The tuning session's state file: JSON (never pickle), rewritten atomically after every batch.

It holds the setup (model, call arguments, prompts, seeds, budget, techniques, rungs), the candidates (their
options, so neighbours can be generated again), the brackets of the search, every run's record, the cost of
runs so far, the held-out validations and the elapsed search time. A session started with the same setup
and an existing state file resumes from it: nothing measured is run again.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field

from ..bench.report import json_safe

__all__ = ["TuneState", "STATE_FORMAT", "STATE_VERSION"]

STATE_FORMAT = "vidaccel-tune-state"
STATE_VERSION = 1


@dataclass
class TuneState:
    setup: dict
    elapsed_s: float = 0.0
    candidates: list = field(default_factory=list)   # [{"id", "key", "candidate", "error"}]
    brackets: list = field(default_factory=list)     # [{"members": [ids], "rung": r, "done": bool}]
    records: list = field(default_factory=list)      # measure.Measurements records
    batches: int = 0
    costs: dict = field(default_factory=dict)        # {str(steps): [seconds, runs]}
    validation: list = field(default_factory=list)   # [{"id", "passed", "margin"}]
    finished: bool = False

    def save(self, path: str) -> None:
        doc = {"format": STATE_FORMAT, "version": STATE_VERSION, **json_safe(asdict(self))}
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> "TuneState":
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"tuning state {path!r} is not valid JSON ({e}); delete it to start over") from None
        if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
            raise ValueError(f"tuning state {path!r} is not a vidaccel tuning state (field 'format' is "
                             f"{doc.get('format') if isinstance(doc, dict) else None!r}, expected {STATE_FORMAT!r})")
        if doc.get("version") != STATE_VERSION:
            raise ValueError(f"tuning state {path!r} has version {doc.get('version')!r}; this vidaccel reads "
                             f"{STATE_VERSION}: delete it to start over")
        known = set(cls.__dataclass_fields__)
        body = {k: v for k, v in doc.items() if k in known}
        for r in body.get("records", []):
            if r.get("psnr") == "inf":
                r["psnr"] = math.inf
        return cls(**body)

    def check_setup(self, setup: dict, path: str) -> None:
        """``ValueError`` naming the fields where ``setup`` differs from the state's (resuming needs the same)."""
        ours, theirs = json_safe(self.setup), json_safe(setup)
        diff = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        if diff:
            details = "; ".join(f"{k}: state has {ours.get(k)!r}, now {theirs.get(k)!r}" for k in diff)
            raise ValueError(f"tuning state {path!r} was made with another setup ({details[:600]}); resume with the "
                             "same model, prompts, seeds, budget, techniques and call arguments, or delete the "
                             "state file (or pass a new --state path) to start over")
