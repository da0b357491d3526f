"""The quantization technique: swaps a transformer's ``nn.Linear`` layers and puts the originals back on remove."""

from __future__ import annotations

import logging
import math

from torch import nn

from ...core.context_parallel import move_hooks
from ...core.technique import Technique, register_technique
from ...kernels.fp8.wrapper import Fp8ActivationCache
from .calibration import Calibrator, plan_from_volatility
from .config import QuantConfig
from .layers import layer_formats, locate, plain_linears, quantize_linears, skip_reason, weight_bytes
from .modules import Fp8Linear, QuantLinear, SqnrProbe
from .originals import DiskOriginals

logger = logging.getLogger(__name__)

__all__ = ["QuantTechnique"]


@register_technique(QuantConfig)
class QuantTechnique(Technique):
    """Swaps ``nn.Linear`` children for :class:`Fp8Linear` / :class:`NVFP4Linear` (see module docstring)."""

    name = "quant"

    @classmethod
    def noop_config(cls) -> QuantConfig:
        # every layer kept in high precision: nothing is swapped
        return QuantConfig(skip=[""])

    @classmethod
    def example_config(cls) -> QuantConfig:
        return QuantConfig(format="fp8")

    def attach(self) -> None:
        from .lora import install_peft_dispatch

        install_peft_dispatch()  # a LoRA loaded after this wraps the quantized layers (QuantLoraLinear)
        self.loaded = getattr(self, "loaded", False)
        self.disk: DiskOriginals | None = None
        self.originals: dict[str, nn.Linear] = {}
        self.quantized: dict[str, QuantLinear] = {}
        self.formats: dict[str, str] = {}
        self.skipped: dict[str, str] = {}
        self.volatility: dict[str, float] | None = None
        self.calibrator: Calibrator | None = None
        self.probe = SqnrProbe(self.config.sqnr_tokens)
        self.act_cache = Fp8ActivationCache(self.config.backend)
        self.calls = 0
        self.handles = []
        self.attach_dtype = self.model.dtype
        # a plan given in the config, else the one calibrated earlier (re-attach after vidaccel.remove of a
        # technique applied before this one must not calibrate again)
        plan = self.config.plan_for(self.role) or getattr(self, "calibrated_plan", None)
        if self.config.format == "mixed" and plan is None:
            _, self.skipped = layer_formats(self.model, self.config, None)
            names = [n for n, _ in plain_linears(self.model) if n not in self.skipped]
            self.calibrator = Calibrator(self.model, names)
            self.calibrator.attach()
            logger.info("quant(mixed): the next pipeline call on %s calibrates in full precision", self.role)
        else:
            self._quantize(plan)
        self._hook_model()

    def attach_loaded(self, quantized: dict[str, QuantLinear], layers: dict[str, str]) -> None:
        """Adopt modules built by :func:`load_quantized` (no originals: not removable, SQNR unavailable)."""
        from .lora import install_peft_dispatch

        install_peft_dispatch()
        self.disk = None
        self.originals, self.quantized, self.formats = {}, dict(quantized), dict(layers)
        patterns = self.config.skip_patterns(self.family)
        names = [n for n, m in self.model.named_modules() if type(m) is nn.Linear or isinstance(m, QuantLinear)]
        self.skipped = {n: r for n in names if (r := skip_reason(n, patterns)) is not None}
        self.volatility, self.calibrator = None, None
        self.probe = SqnrProbe(self.config.sqnr_tokens)
        self.act_cache = Fp8ActivationCache(self.config.backend)
        self.calls = 0
        for m in quantized.values():
            m.probe = self.probe  # no originals: SQNR cannot be measured, layers report None
        self._share_activations()
        self._hook_model()

    def _hook_model(self):
        def pre(module, args):
            self.probe.active = (self.config.measure_sqnr == "first_call" and self.calls == 0 and bool(self.quantized))

        def post(module, args, output):
            self.probe.active = False
            self.act_cache.reset()  # keeps no activation alive between calls
            self.calls += 1

        self.handles = [self.model.register_forward_pre_hook(pre),
                        self.model.register_forward_hook(post, always_call=True)]

    def _share_activations(self) -> None:
        """Give the dynamic FP8 layers that one attention call applies to one input (the family names them: q, k, v
        of the hidden states; k, v of the text) the technique's activation cache: that input is quantized once
        for all of them. The FFN and output layers keep quantizing their own input, so the cache never holds
        more than one attention input."""
        for group in self.family.attention_input_projections(self.model):
            for name in group:
                qmodule = self.quantized.get(name)
                if (isinstance(qmodule, Fp8Linear) and qmodule.activations == "dynamic"
                        and qmodule.backend == self.act_cache.backend):
                    qmodule.act_cache = self.act_cache

    def _quantize(self, plan: dict[str, str] | None) -> None:
        formats, skipped = layer_formats(self.model, self.config, plan)
        keep = self.config.keep_original
        if keep == "disk" and formats:  # checked before anything changes: a refusal leaves the model as it was
            disk = DiskOriginals(self.model, self.role)
            for name in formats:
                disk.verify_and_record(name, getattr(*locate(self.model, name)))
            self.disk = disk
        self.formats, self.skipped = formats, skipped
        if not self.formats:
            logger.warning("QuantConfig(skip=%r) quantizes nothing on the %s: every one of its %d linear layers "
                           "matches a skip pattern, so it runs in full precision", self.config.skip, self.role,
                           len(self.skipped))
        self.quantized = quantize_linears(self.model, self.config, self.formats)
        for name, qmodule in self.quantized.items():
            qmodule.probe = self.probe
            if keep in ("cpu", "device"):
                self.originals[name] = qmodule.original
            else:  # "disk" / "none": the original weights are freed (no SQNR: nothing to compare with)
                qmodule.set_original(None)
        if keep == "cpu":
            for linear in self.originals.values():
                linear.to("cpu")
        self._share_activations()

    def removable(self) -> str | None:
        if self.loaded:
            return ("was loaded from a quantized checkpoint: its original weights are not in memory (load the "
                    "unquantized model with from_pretrained instead)")
        try:
            self._check_removable()
        except RuntimeError as e:
            return str(e)
        return None

    def _check_removable(self) -> dict[int, tuple[nn.Module, str]]:
        """Where each quantized layer sits now (a LoRA wrapper's ``base_layer``, or its own place after
        ``unload_lora_weights``); raises, before anything changes, when the originals cannot come back."""
        if self.loaded:
            raise RuntimeError(f"the {self.role} was built by load_quantized: its original weights are not in memory, "
                               "so quantization cannot be removed; load the unquantized model with from_pretrained")
        if not self.quantized:
            return {}
        if self.config.keep_original == "none":
            raise RuntimeError(f"QuantConfig(keep_original='none') dropped the original weights of the {self.role}, "
                               "so quantization cannot be removed; reload the model (from_pretrained), or apply with "
                               "keep_original='disk' / 'cpu' / 'device' to keep a way back")
        fused = sorted(n for n, q in self.quantized.items() if q.lora_fused)
        if fused:
            raise RuntimeError(f"a LoRA is fused into the quantized weights of {len(fused)} layers of the {self.role} "
                               f"(e.g. {fused[0]}); call unfuse_lora() before removing quantization (after "
                               "unload_lora_weights the fused weights exist only in quantized form: reload the model)")
        where = {id(child): (parent, attr) for parent in self.model.modules() for attr, child in parent._modules.items()}
        missing = [n for n, q in self.quantized.items() if id(q) not in where]
        if missing:
            raise RuntimeError(f"{len(missing)} quantized layers of the {self.role} are no longer in the model (e.g. "
                               f"{missing[0]}): they were replaced after quantization, so they cannot be restored")
        return where

    def detach(self) -> None:
        where = self._check_removable()
        dtype = self.model.dtype  # the originals go back in the model's dtype of now (pipe.to(...) after apply)
        for h in self.handles:
            h.remove()
        self.handles = []
        if self.calibrator is not None:
            self.calibrator.detach()
            self.calibrator = None
        from .lora import release_wrapper

        for name, qmodule in self.quantized.items():
            device = next(iter(qmodule._buffers.values())).device
            linear = self.originals[name] if name in self.originals else self.disk.restore(name, device)
            if linear.weight.device != device:
                linear.to(device)
            if dtype != self.attach_dtype and linear.weight.dtype != dtype:
                linear.to(dtype)
            qmodule.set_original(None)
            if isinstance(qmodule, Fp8Linear):
                qmodule.act_cache = None
            parent, attr = where[id(qmodule)]
            move_hooks(qmodule, linear)  # context parallelism's hooks go back with the layer
            setattr(parent, attr, linear)
            release_wrapper(parent)
        self.originals.clear()
        self.quantized.clear()
        self.disk = None

    def reset(self) -> None:
        self.calls = 0
        self.probe.reset()
        self.act_cache.reset()

    def finish_run(self) -> None:
        if self.calibrator is None:
            return
        self.volatility = self.calibrator.volatility()
        steps = self.calibrator.steps
        self.calibrator.detach()
        self.calibrator = None
        if steps < 2:
            logger.warning("quant(mixed): calibration on %s saw %d step(s); volatility needs >= 2, so every layer "
                           "gets NVFP4 except the first mixed_fp8_fraction in name order", self.role, steps)
        plan = plan_from_volatility(self.volatility, self.config.mixed_fp8_fraction)
        self.calibrated_plan = plan
        self._quantize(plan)
        counts = {f: sum(v == f for v in plan.values()) for f in ("fp8", "nvfp4")}
        logger.info("quant(mixed) %s: calibrated on %d steps: %s", self.role, steps, counts)

    def stats(self) -> dict:
        state = "calibrating" if self.calibrator is not None else "quantized"
        counts = {"fp8": 0, "nvfp4": 0, "fp8-weight": 0, "skipped": 0}
        for fmt in self.formats.values():
            counts[fmt] += 1
        counts["skipped"] = sum(1 for n in self.skipped if n not in self.formats)
        sqnr = self.probe.sqnr()
        layers = {n: {"format": f, "sqnr_db": sqnr.get(n)} for n, f in self.formats.items()}
        finite = [v for v in sqnr.values() if v is not None and math.isfinite(v)]
        out = {
            "format": self.config.format, "state": state, "loaded": self.loaded, "counts": counts,
            "layers": layers, "skipped": dict(self.skipped),
            "sqnr_db_mean": (sum(finite) / len(finite)) if finite else None,
            "sqnr_db_min": min(finite) if finite else None,
        }
        if self.quantized:
            out.update({k: v for k, v in weight_bytes(self.model).items()})
        by_fmt: dict[str, list[float]] = {}
        for n, f in self.formats.items():
            if sqnr.get(n) is not None and math.isfinite(sqnr[n]):
                by_fmt.setdefault(f, []).append(sqnr[n])
        out["sqnr_db_mean_by_format"] = {f: sum(v) / len(v) for f, v in by_fmt.items()}
        if self.config.format == "mixed":
            out["plan"] = {n: f for n, f in self.formats.items() if f in ("fp8", "nvfp4")}
            out["volatility"] = self.volatility
            total = sum(self.model.get_submodule(n).in_features * self.model.get_submodule(n).out_features
                        for n in out["plan"]) or 1
            fp8 = sum(self.model.get_submodule(n).in_features * self.model.get_submodule(n).out_features
                      for n, f in out["plan"].items() if f == "fp8")
            out["fp8_weight_share"] = fp8 / total
        return out

