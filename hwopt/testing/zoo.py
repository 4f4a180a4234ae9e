"""The model zoo hwopt is measured on: timm's mobile/edge families and torchvision's classifiers.

timm and torchvision are an optional extra (``pip install -e ".[zoo]"``, or ``pip install --no-deps
torchvision==0.28.* timm`` so pip keeps the CPU torch); `available()` says whether they import. The
torchvision wheel built for CUDA torch registers its C++ ops against schemas that a CPU torch lacks:
declaring the two it needs (`nms`, `qnms`) before the import is enough for the model definitions.

`check(name)` runs one model through what a user does: lift, lower and compare (relative error), prune
30 % of the channels, lower the pruned graph and run it, and cost both on a target. Random weights,
eval mode, and the smallest input size each model allows, so a sweep of ~120 models stays in minutes.
"""
from __future__ import annotations

import math
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import torch

_IMPORTED: tuple[Any, Any] | None = None
_TRIED = False


def _declare_torchvision_schemas() -> None:
    try:
        torch.ops.torchvision.nms.default  # noqa: B018 - already declared (or a matching torchvision build)
        return
    except (AttributeError, RuntimeError):
        pass
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _declare_torchvision_schemas.lib = lib  # the registration lives as long as the Library object


def load() -> tuple[Any, Any] | None:
    """(timm, torchvision) modules, or None when either is not installed."""
    global _IMPORTED, _TRIED
    if not _TRIED:
        _TRIED = True
        try:
            _declare_torchvision_schemas()
            import timm
            import torchvision
            _IMPORTED = (timm, torchvision)
        except ImportError:
            _IMPORTED = None
    return _IMPORTED


def available() -> bool:
    return load() is not None


# timm's mobile/edge families (one to a few sizes each, the small end) and ImageNet CNNs people prune.
TIMM_MODELS = (
    "mobilenetv1_100", "mobilenetv2_035", "mobilenetv2_050", "mobilenetv2_100", "mobilenetv2_110d",
    "mobilenetv3_large_075", "mobilenetv3_large_100", "mobilenetv3_rw", "mobilenetv3_small_050",
    "mobilenetv3_small_075", "mobilenetv3_small_100", "tf_mobilenetv3_large_075", "tf_mobilenetv3_small_100",
    "tf_mobilenetv3_small_minimal_100", "mobilenetv4_conv_small", "mobilenetv4_conv_small_035",
    "mobilenetv4_conv_small_050", "mobilenetv4_conv_medium", "mobilenetv4_hybrid_medium",
    "efficientnet_b0", "efficientnet_b1", "efficientnet_es", "efficientnet_em", "efficientnet_lite0",
    "efficientnet_lite1", "efficientnet_b0_gn", "efficientnetv2_rw_t", "efficientnet_cc_b0_4e",
    "tf_efficientnet_b0", "tf_efficientnet_lite0", "tf_efficientnet_es", "tf_efficientnetv2_b0",
    "mnasnet_050", "mnasnet_100", "mnasnet_small", "semnasnet_050", "semnasnet_100", "fbnetc_100", "fbnetv3_b",
    "spnasnet_100", "lcnet_035", "lcnet_050", "lcnet_100", "tinynet_a", "tinynet_d", "tinynet_e",
    "hardcorenas_a", "hardcorenas_c", "hardcorenas_f", "mixnet_s", "mixnet_m", "tf_mixnet_s",
    "rexnet_100", "rexnetr_100", "regnetx_002", "regnetx_004", "regnety_002", "regnety_004", "regnety_006",
    "repvgg_a0", "repvgg_b0", "mobileone_s0", "mobileone_s1", "fastvit_t8", "fastvit_mci0", "cspresnet50",
    "densenet121", "ghostnet_050", "ghostnet_100", "ghostnetv2_100", "repghostnet_050", "repghostnet_100",
    "efficientformer_l1", "efficientformerv2_s0", "convnext_atto", "convnext_femto", "convnext_pico",
    "convnextv2_atto", "edgenext_xx_small", "edgenext_x_small", "levit_128s", "levit_conv_128s",
    "mobilevit_xxs", "mobilevitv2_050", "efficientvit_b0", "efficientvit_m0", "deit_tiny_patch16_224",
    "vit_tiny_patch16_224", "resnet18", "resnet18d", "resnet34", "resnet50", "dla34", "lcnetv2_small",
)
TORCHVISION_MODELS = (
    "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "mnasnet0_5", "mnasnet1_0",
    "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "efficientnet_b0", "efficientnet_v2_s", "resnet18", "resnet50",
    "resnext50_32x4d", "regnet_x_400mf", "regnet_y_400mf", "squeezenet1_0", "squeezenet1_1", "googlenet",
    "densenet121", "convnext_tiny", "alexnet", "vgg11_bn", "vit_b_16", "swin_t",
)
# The default (fast) test run: one of each front-end pattern, all small.
FAST = ("timm/mobilenetv3_small_050", "timm/convnext_atto", "timm/ghostnet_050", "timm/vit_tiny_patch16_224",
        "torchvision/shufflenet_v2_x0_5", "torchvision/efficientnet_b0")
# Transformers with a fixed token grid take their image size as a constructor argument.
_TIMM_IMG_SIZE_ARG = ("deit", "vit_", "levit", "efficientformer", "mobilevit", "efficientvit", "fastvit",
                      "edgenext")


# Attention biases sized for a 14x14 / 7x7 token grid at 224: no other input size runs.
_FIXED_224 = ("efficientformer", "levit")


# MobileViT unfolds feature maps into 2x2 patches and interpolates when a map does not divide: 128 is the
# smallest size whose every stage (down to 1/32) divides, so the model runs as designed.
_MIN_SIZE = {"mobilevit": 128}


def all_names() -> list[str]:
    return [f"timm/{n}" for n in TIMM_MODELS] + [f"torchvision/{n}" for n in TORCHVISION_MODELS]


def build(name: str, size: int = 96) -> tuple[torch.nn.Module, torch.Tensor]:
    """(model in eval mode with seeded random weights, a [1, 3, size, size] input) for "timm/x" or
    "torchvision/x". ViT-style models get a 224 grid (torchvision) or `img_size=size` (timm)."""
    zoo = load()
    if zoo is None:
        raise ImportError("the model zoo needs timm and torchvision (pip install -e '.[zoo]')")
    timm, torchvision = zoo
    source, _, arch = name.partition("/")
    torch.manual_seed(0)
    if arch.startswith(_FIXED_224):
        size = 224
    size = max([size] + [v for k, v in _MIN_SIZE.items() if arch.startswith(k)])
    if source == "timm":
        kwargs = {"img_size": size} if arch.startswith(_TIMM_IMG_SIZE_ARG) else {}
        try:
            model = timm.create_model(arch, pretrained=False, num_classes=100, **kwargs)
        except TypeError:  # this one has no img_size argument: it takes any input size
            model = timm.create_model(arch, pretrained=False, num_classes=100)
    elif source == "torchvision":
        kwargs = {}
        if arch.startswith(("vit_", "swin")):
            size = 224 if arch.startswith("swin") else size
            if arch.startswith("vit_"):
                kwargs["image_size"] = size
        if arch in ("googlenet", "inception_v3"):
            kwargs["aux_logits"] = False
            kwargs["init_weights"] = False
        if arch == "alexnet":
            size = max(size, 64)
        model = torchvision.models.get_model(arch, weights=None, num_classes=100, **kwargs)
    else:
        raise ValueError(f"zoo model {name!r} must start with 'timm/' or 'torchvision/'")
    _randomize_bn(model)
    return model.eval(), torch.randn(1, 3, size, size)


def _randomize_bn(model: torch.nn.Module) -> None:
    # fresh BN statistics (mean 0, var 1) would hide a wrongly lowered BN; give them non-trivial values
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


@dataclass
class Outcome:
    name: str
    lifted: bool = False
    rel_error: float = math.nan
    lift_seconds: float = math.nan
    error: str = ""  # why lifting (or, when lifted, pruning) failed: the exception's first line
    error_type: str = ""
    pruned: bool = False
    params: tuple[int, int] = (0, 0)  # before / after pruning, counted on the lowered torch modules
    latency_ms: tuple[float, float] = (math.nan, math.nan)  # predicted on the target, before / after
    notes: list[str] = field(default_factory=list)
    # an UnsupportedOpError's `found`: (op, module path) of every unsupported op, and its whole message
    unsupported: list[tuple[str, str]] = field(default_factory=list)
    message: str = ""

    @property
    def exact(self) -> bool:
        return self.lifted and self.rel_error <= 1e-4


def _rel_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y - ref).norm() / ref.norm().clamp_min(1e-12))


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def check(name: str, *, ratio: float = 0.3, target: str | None = "cortex-a72", size: int = 96,
          prune: bool = True) -> Outcome:
    """Lift, lower and compare; then prune `ratio` of the channels and check the pruned model."""
    import hwopt
    from hwopt.passes.channel_prune import ChannelPrune
    out = Outcome(name)
    try:
        model, x = build(name, size)
        ref = _first(model(x))
    except Exception as e:  # noqa: BLE001 - the model itself does not build or run at this size
        out.error_type, out.error = "ModelError", f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        return out
    try:
        t0 = time.perf_counter()
        g = hwopt.lift(model, x)
        out.lift_seconds = time.perf_counter() - t0
        lowered = hwopt.lower(g)
        out.rel_error = _rel_error(_first(lowered(x)), ref)
        out.lifted = True
    except Exception as e:  # noqa: BLE001 - the zoo records every failure, by type
        out.error_type, out.error = type(e).__name__, str(e).splitlines()[0][:300]
        if isinstance(e, hwopt.UnsupportedOpError):
            out.unsupported, out.message = [(f.op, f.module_path) for f in e.found], str(e)
        if not isinstance(e, hwopt.HwoptError):
            out.notes.append(traceback.format_exc(limit=-3))
        return out
    if not prune or not out.exact:
        return out
    try:
        pruned = ChannelPrune(criterion="l1", ratio=ratio, round_to=1).run(g, hwopt.PassContext())
        pruned.verify()
        small = hwopt.lower(pruned)
        y = _first(small(x))
        before = sum(p.numel() for p in lowered.parameters())
        after = sum(p.numel() for p in small.parameters())
        out.params = (before, after)
        out.pruned = bool(torch.isfinite(y).all()) and y.shape == ref.shape and after < before
        if not out.pruned:
            out.notes.append(f"pruned model: params {before} -> {after}, output {tuple(y.shape)}")
        if target:
            t = hwopt.load_target(target)
            out.latency_ms = (t.cost(g).latency_ms, t.cost(pruned).latency_ms)
    except Exception as e:  # noqa: BLE001
        out.error_type, out.error = type(e).__name__, "prune: " + str(e).splitlines()[0][:300]
        if not isinstance(e, hwopt.HwoptError):
            out.notes.append(traceback.format_exc(limit=-3))
    return out
