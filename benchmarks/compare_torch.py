"""fer_flax against the same networks in PyTorch: training images/s side by side in one process, CPU or GPU.

  python benchmarks/compare_torch.py [--models cnn,beefy,resnet18] [--batch 128] [--windows 5]
      [--steps 5] [--warmup 3] [--torch_memory_format channels_last|contiguous] [--torch_threads N]
      [--dtype float32|bfloat16] [--augment | --no_augment] [--malloc reuse|defaults] [--json out.json]

Needs PyTorch (`pip install -e ".[bench]"`, i.e. torch==2.13.0, the CPU wheel on these machines).

The PyTorch models below are written from the same fer_flax module fields (widths, blocks, stems, head,
dropout) as the flax ones, with the same layers: 3×3 convs without bias before BatchNorm, BatchNorm with
flax's momentum 0.9 (= torch's 0.1) and eps 1e-5, 2×2 max-pooling, global average pooling, the same heads
and dropouts. Before timing, the script asserts that each PyTorch model has exactly as many parameters as
fer_flax's and copies fer_flax's initial weights into it (`load_flax_variables`: conv HWIO → OIHW, dense
(in, out) → (out, in), BatchNorm scale/bias/mean/var), so both start from the same network;
tests/test_compare_torch.py checks that both then give the same eval-mode logits.

Both sides train on the same random uint8 batch (default 128 × 48×48×1), normalised like
`fer_flax.augment.preprocess` inside the step, with softmax cross-entropy with label smoothing 0.1 and
SGD with Nesterov momentum 0.9 and L2 weight decay 5e-4 on conv/linear weights only (the SGD recipe of
configs/common.py). The fer_flax step is the real `fer_flax.steps.train_step`, jitted with donated state
as in train_throughput.py (it also computes accuracy and the gradient norm); the PyTorch step is eager
mode with `torch.optim.SGD`, its learning rate set at every step to the value of fer_flax's schedule
(train_throughput.py's warmup + cosine) at the same step, so both do the same updates and the losses they
end with (in the JSON lines) are comparable, not one diverging at the peak rate. Augmentation is off on
both sides by default (`--no_augment`); `--augment` turns on the recipe's pad-crop 4, flip, ±10° rotation
and erasing 0.25 on both sides (fer_flax's own on-device augmentation; in PyTorch the equivalent batched
work: one affine_grid + grid_sample resample with mirrored borders and a random-erasing mask).

Timing: `--warmup` steps of each (plus fer_flax's compilation), then `--windows` rounds of a PyTorch
window of `--steps` steps followed by a fer_flax window of `--steps` steps, so slow drifts of the machine
hit both alike. Reported: the median images/s over each framework's windows and fer_flax / PyTorch.
PyTorch runs on `--torch_threads` threads (default: every CPU) in `channels_last` memory format (its
fastest on CPU; `--torch_memory_format contiguous` for NCHW). The process starts as every fer_flax entry
point does (`fer_flax.runtime.start()`), so it runs with the CPU corner's glibc malloc settings
(`fer_flax.cpu.allocator`), which PyTorch then shares; `--malloc defaults` keeps glibc's for both.
Minor page faults per timed step are reported for each side.

On a GPU (JAX's default backend is "gpu"; PyTorch must be a CUDA build) both frameworks run there:
PyTorch with `cudnn.benchmark` and TF32 matrix products (as XLA uses TF32 for float32 by default on
such hardware), the timer stopped after synchronising the device; the malloc settings are left alone.
`--dtype bfloat16` computes in bfloat16 on both sides (fer_flax's `config.dtype`, PyTorch's autocast),
with float32 weights. Give the GPU a batch that fills it, e.g. `--batch 1024`. Tiny settings for a
quick check:

  python benchmarks/compare_torch.py --models cnn --batch 8 --windows 1 --steps 1
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import importlib
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from collections import OrderedDict
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from flax import traverse_util
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.train_step_setup import build_train_step, make_config
from fer_flax import models, parallel, runtime
from fer_flax.augment import ERASE_RATIO, MEAN, STD
from fer_flax.cpu import allocator, devices
from fer_flax.data.splits import IMAGE_SIZE
from fer_flax.models.layers import BATCH_NORM_MOMENTUM

# flax.linen.BatchNorm's default epsilon (and torch's).
BN_EPS = 1e-5
MEMORY_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}

# ------------------------------------------------------------------------------------ the models


def _bn(features: int, dims: int = 2, momentum: float = BATCH_NORM_MOMENTUM) -> nn.Module:
    # flax: ra = momentum * ra + (1 - momentum) * batch; torch: ra = (1 - m) * ra + m * batch.
    cls = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
    return cls(features, eps=BN_EPS, momentum=1.0 - momentum)


def _act(name: str) -> nn.Module:
    # flax.linen.gelu is the tanh approximation by default; leaky_relu's slope is 0.01 in both.
    acts = {
        "relu": nn.ReLU,
        "gelu": functools.partial(nn.GELU, approximate="tanh"),
        "silu": nn.SiLU,
        "elu": nn.ELU,
        "leaky_relu": functools.partial(nn.LeakyReLU, 0.01),
    }
    if name not in acts:
        raise ValueError(f"No PyTorch counterpart for activation {name!r}; valid: {', '.join(acts)}")
    return acts[name]()


def _conv(cin: int, cout: int, kernel: int, stride: int = 1, padding: int | None = None, bias=False):
    # flax's explicit padding 1 (3×3), 3 (7×7) and "SAME" at stride 1 are all kernel // 2 here; a 1×1
    # "SAME"/"VALID" conv has none.
    return nn.Conv2d(cin, cout, kernel, stride, kernel // 2 if padding is None else padding, bias=bias)


def _flatten_linear(in_features: int, out_features: int, hwc: tuple[int, int, int], bias: bool):
    """A Linear after a flatten. flax flattens NHWC in (H, W, C) order, PyTorch NCHW in (C, H, W):
    the weight converter needs the feature-map shape to reorder the rows."""
    layer = nn.Linear(in_features, out_features, bias=bias)
    layer.flax_flatten_hwc = hwc
    return layer


class GlobalAvgPool(nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3))


class TorchPlainCNN(nn.Sequential):
    """fer_flax.models.cnn.PlainCNN: (conv 3×3 → [BN] → ReLU) × n → max-pool 2×2 per stage, flatten,
    Dense → ReLU → Dropout per hidden width, Dense."""

    def __init__(self, m):
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        cin, size, k = 1, IMAGE_SIZE, 0
        counts = m.convs_per_stage  # one count for every stage, or (newer cnn.py) one per stage
        counts = (counts,) * len(m.stage_widths) if isinstance(counts, int) else tuple(counts)
        for s, (width, count) in enumerate(zip(m.stage_widths, counts, strict=True)):
            for _ in range(count):
                # Flax auto-names the layers Conv_k / BatchNorm_k: the weight converter relies on it.
                layers[f"Conv_{k}"] = _conv(cin, width, 3, bias=not m.batch_norm)
                if m.batch_norm:
                    layers[f"BatchNorm_{k}"] = _bn(width)
                layers[f"relu_{k}"] = nn.ReLU()
                cin, k = width, k + 1
            layers[f"pool_{s}"] = nn.MaxPool2d(2, 2)
            size //= 2
        layers["flatten"] = nn.Flatten()
        features, hwc = cin * size * size, (size, size, cin)
        for d, width in enumerate(m.dense_widths):
            if d == 0:
                layers[f"Dense_{d}"] = _flatten_linear(features, width, hwc, bias=True)
            else:
                layers[f"Dense_{d}"] = nn.Linear(features, width)
            layers[f"dense_relu_{d}"] = nn.ReLU()
            layers[f"dropout_{d}"] = nn.Dropout(m.dropout)
            features = width
        n = len(m.dense_widths)
        layers[f"Dense_{n}"] = (
            _flatten_linear(features, m.num_classes, hwc, bias=True)
            if n == 0
            else nn.Linear(features, m.num_classes)
        )
        super().__init__(layers)


class TorchConvBNAct(nn.Sequential):
    def __init__(self, cin: int, features: int, activation: str):
        super().__init__(
            OrderedDict(Conv_0=_conv(cin, features, 3), BatchNorm_0=_bn(features), act=_act(activation))
        )


class TorchBeefyBlock(nn.Module):
    """conv 3×3 → BN → act → conv 3×3 → BN, + skip (1×1 conv + BN if the shape changes), act, dropout."""

    def __init__(self, cin: int, features: int, stride: int, dropout: float, activation: str):
        super().__init__()
        self.Conv_0 = _conv(cin, features, 3, stride, padding=1)
        self.BatchNorm_0 = _bn(features)
        self.Conv_1 = _conv(features, features, 3, padding=1)
        self.BatchNorm_1 = _bn(features)
        self.proj_conv = self.proj_bn = None
        if cin != features or stride != 1:
            self.proj_conv = _conv(cin, features, 1, stride, padding=0)
            self.proj_bn = _bn(features)
        self.act = _act(activation)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        y = self.act(self.BatchNorm_0(self.Conv_0(x)))
        y = self.BatchNorm_1(self.Conv_1(y))
        if self.proj_conv is not None:
            x = self.proj_bn(self.proj_conv(x))
        return self.dropout(self.act(x + y))


class TorchBeefyModel(nn.Sequential):
    """fer_flax.models.beefy.BeefyModel (either downsampling, either pooling, every activation)."""

    def __init__(self, m):
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["stem"] = TorchConvBNAct(1, m.width, m.activation)
        cin, size = m.width, IMAGE_SIZE
        for i, num_blocks in enumerate(m._stage_blocks()):
            features, first_stride = m.width * 2**i, 1
            if i > 0 and m.downsample == "maxpool":
                layers[f"stage{i + 1}_widen"] = TorchConvBNAct(cin, features, m.activation)
                layers[f"stage{i + 1}_pool"] = nn.MaxPool2d(2, 2)
                cin, size = features, size // 2
            elif i > 0:
                first_stride, size = 2, (size + 1) // 2
            for j in range(num_blocks):
                stride = first_stride if j == 0 else 1
                layers[f"stage{i + 1}_block{j + 1}"] = TorchBeefyBlock(
                    cin, features, stride, m.block_dropout, m.activation
                )
                cin = features
        if m.pooling == "avg":
            layers["pool"], features, hwc = GlobalAvgPool(), cin, None
        else:
            layers["pool"], features, hwc = nn.Flatten(), cin * size * size, (size, size, cin)
        for k, width in enumerate(m.head_widths):
            layers[f"head_dense_{k}"] = (
                _flatten_linear(features, width, hwc, bias=False)
                if hwc and k == 0
                else nn.Linear(features, width, bias=False)
            )
            layers[f"head_bn_{k}"] = _bn(width, dims=1)
            layers[f"head_act_{k}"] = _act(m.activation)
            layers[f"head_dropout_{k}"] = nn.Dropout(m.head_dropout)
            features = width
        layers["classifier"] = (
            _flatten_linear(features, m.num_classes, hwc, bias=True)
            if hwc and not m.head_widths
            else nn.Linear(features, m.num_classes)
        )
        super().__init__(layers)


class TorchBasicBlock(nn.Module):
    """fer_flax.models.resnet.BasicBlock (torchvision's BasicBlock with the same names as flax's)."""

    def __init__(self, cin: int, features: int, stride: int):
        super().__init__()
        self.conv_0 = _conv(cin, features, 3, stride, padding=1)
        self.bn_0 = _bn(features)
        self.conv_1 = _conv(features, features, 3, padding=1)
        self.bn_1 = _bn(features)
        self.proj_conv = self.proj_bn = None
        if cin != features or stride != 1:
            self.proj_conv = _conv(cin, features, 1, stride, padding=0)
            self.proj_bn = _bn(features)

    def forward(self, x):
        y = F.relu(self.bn_0(self.conv_0(x)))
        y = self.bn_1(self.conv_1(y))
        if self.proj_conv is not None:
            x = self.proj_bn(self.proj_conv(x))
        return F.relu(x + y)


class TorchResNet(nn.Sequential):
    """fer_flax.models.resnet.ResNet: every stem ("s1" 3×3/1, "s2" 3×3/2, "imagenet" 7×7/2 + 3×3/2
    max-pool), basic-block stages, global average pooling, optional Dense-BN-ReLU-dropout head."""

    def __init__(self, m):
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        kernel, stride = (7, 2) if m.stem == "imagenet" else (3, 1 if m.stem == "s1" else 2)
        layers["stem_conv"] = _conv(1, m.widths[0], kernel, stride)
        layers["stem_bn"] = _bn(m.widths[0])
        layers["stem_relu"] = nn.ReLU()
        if m.stem == "imagenet":
            layers["stem_pool"] = nn.MaxPool2d(3, 2, padding=1)  # -inf padding in both
        cin = m.widths[0]
        for i, (num_blocks, width) in enumerate(zip(m.stage_sizes, m.widths, strict=True)):
            for j in range(num_blocks):
                stride = 2 if i > 0 and j == 0 else 1
                layers[f"stage{i + 1}_block{j + 1}"] = TorchBasicBlock(cin, width, stride)
                cin = width
        layers["pool"] = GlobalAvgPool()
        for k, width in enumerate(m.head_widths):
            layers[f"head_dense_{k}"] = nn.Linear(cin, width, bias=False)
            layers[f"head_bn_{k}"] = _bn(width, dims=1, momentum=0.9)  # resnet.py's own head BN
            layers[f"head_relu_{k}"] = nn.ReLU()
            layers[f"head_dropout_{k}"] = nn.Dropout(m.head_dropout)
            cin = width
        layers["classifier"] = nn.Linear(cin, m.num_classes)
        super().__init__(layers)


TORCH_MODELS = {"cnn": TorchPlainCNN, "beefy": TorchBeefyModel, "resnet": TorchResNet}


def torch_model_like(flax_model) -> nn.Module:
    """The PyTorch network with the same layers as the fer_flax module `flax_model`."""
    family = type(flax_model).__module__.rsplit(".", 1)[-1]
    if family not in TORCH_MODELS:
        raise ValueError(f"No PyTorch counterpart for {type(flax_model).__name__}; have {list(TORCH_MODELS)}")
    if np.dtype(getattr(flax_model, "dtype", "float32")) != np.float32:
        raise ValueError("the PyTorch counterparts are float32 only")
    return TORCH_MODELS[family](flax_model)


def count_torch_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flax_params(params) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(params))


@torch.no_grad()
def load_flax_variables(model: nn.Module, variables: dict) -> None:
    """Copies flax `{"params", "batch_stats"}` into the PyTorch counterpart, in place. Torch module
    `a.b` takes flax module `a/b`. Fails unless every flax array and every torch parameter and running
    statistic is used exactly once with matching shapes."""
    flat = traverse_util.flatten_dict
    params = {k: np.asarray(v) for k, v in flat(variables["params"]).items()}
    stats = {k: np.asarray(v) for k, v in flat(variables.get("batch_stats", {})).items()}
    used: set[tuple[str, ...]] = set()
    set_tensors: set[int] = set()

    def take(table, path, name):
        key = (*path, name)
        if key not in table:
            raise KeyError(f"fer_flax has no {'/'.join(key)} for the torch module {'.'.join(path)}")
        used.add(("params" if table is params else "batch_stats", *key))
        return table[key]

    def put(tensor: torch.Tensor, value: np.ndarray, what: str) -> None:
        if tuple(tensor.shape) != value.shape:
            raise ValueError(f"{what}: torch shape {tuple(tensor.shape)}, converted flax shape {value.shape}")
        tensor.copy_(torch.from_numpy(np.array(value, copy=True)))
        set_tensors.add(id(tensor))

    for name, mod in model.named_modules():
        path = tuple(name.split(".")) if name else ()
        if isinstance(mod, nn.Conv2d):
            put(mod.weight, take(params, path, "kernel").transpose(3, 2, 0, 1), name)  # HWIO -> OIHW
        elif isinstance(mod, nn.Linear):
            kernel = take(params, path, "kernel")  # (in, out)
            hwc = getattr(mod, "flax_flatten_hwc", None)
            if hwc is not None:  # rows in (H, W, C) order -> columns in (C, H, W) order
                kernel = kernel.reshape(*hwc, -1).transpose(2, 0, 1, 3).reshape(kernel.shape)
            put(mod.weight, kernel.T, name)
        elif isinstance(mod, nn.BatchNorm1d | nn.BatchNorm2d):
            put(mod.weight, take(params, path, "scale"), name)
            put(mod.bias, take(params, path, "bias"), name)
            put(mod.running_mean, take(stats, path, "mean"), name)
            put(mod.running_var, take(stats, path, "var"), name)
            continue
        else:
            continue
        if mod.bias is not None:
            put(mod.bias, take(params, path, "bias"), name)
    unused = [("params", *k) for k in params] + [("batch_stats", *k) for k in stats]
    unused = ["/".join(k) for k in unused if k not in used]
    if unused:
        raise ValueError(f"fer_flax arrays with no torch counterpart: {unused}")
    missing = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if id(t) not in set_tensors]
    missing = [n for n in missing if not n.endswith("num_batches_tracked")]
    if missing:
        raise ValueError(f"torch tensors not set from fer_flax: {missing}")


def decay_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """fer_flax.optim.weight_decay_mask's rule: decay conv and linear weights (flax "kernel"s) only."""
    decay, no_decay = [], []
    for mod in model.modules():
        for name, p in mod.named_parameters(recurse=False):
            is_kernel = isinstance(mod, nn.Conv2d | nn.Linear) and name == "weight"
            (decay if is_kernel else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ---------------------------------------------------------------------------------- torch step


def torch_preprocess(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 1, 48, 48] -> float32, `(x/255 - MEAN) / STD` as fer_flax.augment.preprocess."""
    return (images_u8.to(torch.float32) / 255.0 - MEAN) / STD


def torch_augment(x: torch.Tensor, aug) -> torch.Tensor:
    """The batched PyTorch equivalent of fer_flax's recipe augmentation (pad-crop shift, flip and
    rotation as one inverse affine map resampled bilinearly with mirrored borders, then random
    erasing filled with 0); `aug` holds the config.augment keys."""
    b, _, h, w = x.shape
    u = torch.rand(b, 8, device=x.device)
    flip = torch.where(u[:, 0] < 0.5, -1.0, 1.0) if aug.flip else torch.ones(b, device=x.device)
    theta = torch.deg2rad((2 * u[:, 1] - 1) * float(aug.rotate_degrees))
    cos, sin = torch.cos(theta), torch.sin(theta)
    pad = int(aug.pad_crop)
    shift = torch.floor(u[:, 2:4] * (2 * pad + 1)).clamp(max=2 * pad) - pad  # integer pixel shifts
    # align_corners=False: normalised coordinate = pixel offset from the centre / (size / 2).
    mat = torch.stack(
        [
            torch.stack([cos * flip, -sin, shift[:, 1] / (w / 2)], dim=1),
            torch.stack([sin * flip, cos, shift[:, 0] / (h / 2)], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(mat, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if aug.erase_prob > 0:
        lo, hi = aug.erase_scale
        area = (lo + (hi - lo) * u[:, 4]) * h * w
        ratio = torch.exp(math.log(ERASE_RATIO[0]) + u[:, 5] * math.log(ERASE_RATIO[1] / ERASE_RATIO[0]))
        eh = torch.round(torch.sqrt(area / ratio)).clamp(1, h)
        ew = torch.round(torch.sqrt(area * ratio)).clamp(1, w)
        y0 = torch.floor(torch.rand(b, device=x.device) * (h - eh + 1))
        x0 = torch.floor(torch.rand(b, device=x.device) * (w - ew + 1))
        rows = torch.arange(h, dtype=x.dtype, device=x.device)
        cols = torch.arange(w, dtype=x.dtype, device=x.device)
        in_rows = (rows >= y0[:, None]) & (rows < (y0 + eh)[:, None])
        in_cols = (cols >= x0[:, None]) & (cols < (x0 + ew)[:, None])
        inside = in_rows[:, :, None] & in_cols[:, None, :] & (u[:, 6] < aug.erase_prob)[:, None, None]
        x = x.masked_fill(inside[:, None], 0.0)
    return x


def make_torch_step(
    model,
    optimizer,
    images_u8,
    labels,
    *,
    memory_format,
    label_smoothing,
    augment,
    learning_rates,
    autocast_dtype: torch.dtype | None = None,
):
    """One eager PyTorch training step on the fixed batch (on the device `images_u8` is on); returns
    the loss tensor. Step i uses `learning_rates[i]` (fer_flax's schedule at its step i; the last entry
    after the end). `autocast_dtype` (bfloat16) runs the forward pass and loss under autocast, as
    fer_flax's `config.dtype` computes in bfloat16 with float32 parameters."""
    step_index = 0
    if autocast_dtype is None:
        autocast = contextlib.nullcontext
    else:
        autocast = functools.partial(torch.autocast, images_u8.device.type, dtype=autocast_dtype)

    def step():
        nonlocal step_index
        lr = float(learning_rates[min(step_index, len(learning_rates) - 1)])
        step_index += 1
        for group in optimizer.param_groups:
            group["lr"] = lr
        x = torch_preprocess(images_u8)
        if augment is not None:
            x = torch_augment(x, augment)
        x = x.contiguous(memory_format=memory_format)
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = F.cross_entropy(model(x), labels, label_smoothing=label_smoothing)
        loss.backward()
        optimizer.step()
        return loss

    return step


# -------------------------------------------------------------------------------- the comparison

MODEL_ALIASES = {
    "cnn": ("cnn", "small"),
    "resnet18": ("resnet", "resnet18"),
    "resnet": ("resnet", "resnet18"),
}


def beefy_default_variant() -> str:
    """BeefyModel's DEFAULT_VARIANT if its module names one, else the variant configs/beefy.py trains."""
    preferred = getattr(importlib.import_module("fer_flax.models.beefy"), "DEFAULT_VARIANT", None)
    if preferred in models.variants("beefy"):
        return preferred
    return importlib.import_module("configs.beefy").get_config().model.variant


def resolve_model(spec: str) -> tuple[str, str]:
    """`cnn`, `beefy`, `resnet18`, or any `family:variant` of the three families."""
    if ":" in spec:
        family, variant = spec.split(":", 1)
    elif spec == "beefy":
        family, variant = "beefy", beefy_default_variant()
    elif spec in MODEL_ALIASES:
        family, variant = MODEL_ALIASES[spec]
    else:
        raise ValueError(f"Unknown model {spec!r}: cnn, beefy, resnet18 or family:variant")
    if family not in TORCH_MODELS:
        raise ValueError(f"No PyTorch counterpart for family {family!r}; have {', '.join(TORCH_MODELS)}")
    if variant not in models.variants(family):
        raise ValueError(f"Unknown {family} variant {variant!r}; valid: {', '.join(models.variants(family))}")
    return family, variant


def compare(
    family: str,
    variant: str,
    *,
    batch: int,
    windows: int,
    steps: int,
    warmup: int,
    memory_format: str,
    augment: bool,
    mesh,
    dtype: str = "float32",
    device: str = "cpu",
) -> dict[str, Any]:
    """Times fer_flax's step on `mesh` against PyTorch's on `device` ("cpu" or "cuda"), both
    computing in `dtype` (fer_flax's config.dtype; PyTorch's autocast for bfloat16)."""
    config = make_config(family, variant, batch, augment, dtype)
    # fer_flax: the step every speed benchmark times (benchmarks/train_step_setup.py).
    setup = build_train_step(config, mesh)
    model, schedule, state = setup.model, setup.schedule, setup.state
    flax_params = count_flax_params(state.params)
    images, labels = setup.images, setup.labels

    # PyTorch: the same network, checked by its parameter count, starting from the same weights.
    fmt = MEMORY_FORMATS[memory_format]
    # The PyTorch network is described by the float32 module (autocast supplies the compute dtype).
    tmodel = torch_model_like(model.clone(dtype=jnp.float32) if dtype != "float32" else model)
    torch_params = count_torch_params(tmodel)
    assert torch_params == flax_params, (
        f"{family}:{variant}: the PyTorch model has {torch_params:,} parameters, fer_flax's {flax_params:,}"
    )
    load_flax_variables(tmodel, {"params": state.params, "batch_stats": state.batch_stats})
    tmodel = tmodel.to(device=device, memory_format=fmt).train()
    o = config.optim
    optimizer = torch.optim.SGD(
        decay_param_groups(tmodel, o.weight_decay), lr=o.lr, momentum=o.momentum, nesterov=o.nesterov
    )
    torch_step = make_torch_step(
        tmodel,
        optimizer,
        torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device),
        torch.from_numpy(labels).long().to(device),
        memory_format=fmt,
        label_smoothing=config.label_smoothing,
        augment=config.augment if augment else None,
        # The same learning rate at every step as fer_flax's schedule (its warmup, at these step counts):
        # a constant peak rate from step 0 makes a fresh net diverge, and then the two would not be
        # doing the same arithmetic any more.
        learning_rates=np.asarray(jax.vmap(schedule)(np.arange(max(warmup, 1) + windows * steps + 1))),
        autocast_dtype={"float32": None, "bfloat16": torch.bfloat16}[dtype],
    )

    last_loss: dict[str, float] = {}
    faults = {"flax": 0, "torch": 0}  # minor page faults during the timed windows

    def run_flax(n: int) -> float:
        f0, t0 = _minor_faults(), time.perf_counter()
        metrics = setup.run(n)
        jax.block_until_ready((setup.state, metrics))
        seconds = time.perf_counter() - t0
        faults["flax"] += _minor_faults() - f0
        last_loss["flax"] = float(metrics["loss"])
        return seconds

    def run_torch(n: int) -> float:
        f0, t0 = _minor_faults(), time.perf_counter()
        for _ in range(n):
            loss = torch_step()
        if device == "cuda":
            torch.cuda.synchronize()  # on a CPU the work is done when the eager call returns
        seconds = time.perf_counter() - t0
        faults["torch"] += _minor_faults() - f0
        last_loss["torch"] = loss.detach().item()
        return seconds

    compile_s = run_flax(1)  # compilation + the first step
    if warmup > 1:
        run_flax(warmup - 1)
    run_torch(max(warmup, 1))
    torch_rates, flax_rates = [], []
    faults.update(flax=0, torch=0)
    for _ in range(windows):
        torch_rates.append(steps * batch / run_torch(steps))
        flax_rates.append(steps * batch / run_flax(steps))
    torch_ips, flax_ips = statistics.median(torch_rates), statistics.median(flax_rates)
    row = {
        "model": family,
        "variant": variant,
        "dtype": dtype,
        "torch_device": device,
        "params": flax_params,
        "torch_params": torch_params,
        "torch_images_per_s": torch_ips,
        "flax_images_per_s": flax_ips,
        "ratio_flax_over_torch": flax_ips / torch_ips,
        "torch_window_images_per_s": torch_rates,
        "flax_window_images_per_s": flax_rates,
        "flax_compile_s": compile_s,
        "torch_page_faults_per_step": faults["torch"] / (windows * steps),
        "flax_page_faults_per_step": faults["flax"] / (windows * steps),
        "torch_final_loss": last_loss["torch"],
        "flax_final_loss": last_loss["flax"],
    }
    return row


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def settings_lines(args, threads: int, device: str, malloc: str) -> list[str]:
    c = make_config("cnn", "small", args.batch, args.augment)
    a, o = c.augment, c.optim
    aug = (
        f"the recipe's (pad-crop {a.pad_crop}, flip {a.flip}, ±{a.rotate_degrees:g}° rotation, "
        f"erase {a.erase_prob:g}) on both sides"
        if args.augment
        else "none on either side"
    )
    return [
        f"jax {jax.__version__} ({jax.device_count()} {jax.devices()[0].platform} device(s)), "
        f"torch {torch.__version__} (eager on {device}"
        + (f" {torch.cuda.get_device_name()}, cudnn.benchmark, TF32" if device == "cuda" else "")
        + (f", {threads} threads" if device == "cpu" else "")
        + f", {args.torch_memory_format}); "
        f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start"
        + ("" if os.getloadavg()[0] < 0.5 * (os.cpu_count() or 1) else " (NOT quiet: figures unreliable)"),
        f"batch {args.batch} {args.dtype} 48x48x1; softmax CE + label smoothing {c.label_smoothing:g}; "
        f"SGD{' Nesterov' if o.nesterov else ''} momentum {o.momentum:g}, weight decay "
        f"{o.weight_decay:g} on conv/linear weights; augmentation: {aug}",
        f"{args.windows} alternating windows of {args.steps} steps (torch, then fer_flax) after "
        f"{args.warmup} warm-up steps each; medians over the windows; glibc malloc: {malloc}",
    ]


def print_table(rows: list[dict]) -> None:
    header = f"{'model':<8} {'variant':<16} {'dtype':<9} {'params':>12} {'torch img/s':>12} "
    header += f"{'fer_flax img/s':>15} "
    header += f"{'flax/torch':>10} {'faults/step torch, flax':>24}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['model']:<8} {r['variant']:<16} {r['dtype']:<9} {r['params']:>12,} "
            f"{r['torch_images_per_s']:>12,.1f} "
            f"{r['flax_images_per_s']:>15,.1f} {r['ratio_flax_over_torch']:>9.2f}x "
            f"{r['torch_page_faults_per_step']:>12,.0f}, {r['flax_page_faults_per_step']:>9,.0f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="cnn,beefy,resnet18", help="comma-separated; or family:variant")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--windows", type=int, default=5, help="timed windows per framework")
    parser.add_argument("--steps", type=int, default=5, help="training steps per window")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps of each framework first")
    parser.add_argument("--torch_memory_format", choices=tuple(MEMORY_FORMATS), default="channels_last")
    parser.add_argument("--torch_threads", type=int, default=os.cpu_count())
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="compute dtype on both sides: fer_flax's config.dtype, PyTorch's autocast (float32 weights)",
    )
    parser.add_argument("--augment", dest="augment", action="store_true", help="the recipe's, both sides")
    parser.add_argument("--no_augment", dest="augment", action="store_false", help="(default) neither side")
    parser.set_defaults(augment=False)
    parser.add_argument(
        "--cpu_devices",
        type=int,
        default=0,
        help="JAX CPU devices for fer_flax's data-parallel step, as config.cpu_devices (0 = one per core)",
    )
    parser.add_argument(
        "--malloc",
        choices=("reuse", "defaults"),
        default="reuse",
        help="reuse: the CPU corner's glibc settings, as every entry point applies them (the process "
        "is shared, so PyTorch runs with them too); defaults: glibc's defaults for both",
    )
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    if args.windows < 1 or args.steps < 1:
        parser.error("--windows and --steps must be >= 1")
    # Before JAX starts its CPU client (arena settings reach only threads that have not allocated yet).
    if args.malloc == "defaults":
        os.environ[allocator.KEEP_DEFAULTS_ENV] = "1"
    runtime.start()
    malloc_applied = allocator.in_effect()
    # As the training entry point does before JAX starts: one JAX device per core by default
    # (PyTorch's intra-op threads are its way to use them all).
    devices.configure_cpu_devices(args.cpu_devices, (args.batch,))
    # On a GPU both frameworks run there; the host allocator then does not matter (and is left alone).
    device = "cuda" if jax.default_backend() == "gpu" else "cpu"
    if device == "cpu" and args.malloc == "reuse" and not malloc_applied:
        parser.error("--malloc reuse needs glibc on Linux and a CPU backend; use --malloc defaults")
    if device == "cuda":
        if not torch.cuda.is_available():
            parser.error("JAX runs on a GPU but this PyTorch build sees none: install a CUDA build of torch")
        # PyTorch at its fastest, as XLA autotunes: cuDNN's algorithm search, and TF32 for float32
        # matrix products as XLA uses it by default on this hardware (cuDNN convolutions have it already).
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
    if device == "cuda":
        malloc = "not changed (GPU run)"
    elif malloc_applied:
        malloc = "fer_flax.cpu.allocator's reuse settings (for both)"
    else:
        malloc = "defaults (for both)"

    torch.set_num_threads(args.torch_threads)
    torch.manual_seed(0)
    specs = [resolve_model(s) for s in args.models.split(",") if s]
    mesh = parallel.make_mesh()
    lines = settings_lines(args, torch.get_num_threads(), device, malloc)
    print("\n".join(lines), flush=True)
    rows = []
    for family, variant in specs:
        row = compare(
            family,
            variant,
            batch=args.batch,
            windows=args.windows,
            steps=args.steps,
            warmup=args.warmup,
            memory_format=args.torch_memory_format,
            augment=args.augment,
            mesh=mesh,
            dtype=args.dtype,
            device=device,
        )
        rows.append(row)
        gc.collect()  # free this model's state before the next one is built
        print(json.dumps(row), flush=True)
        if args.json:  # after every row: a time limit keeps what was measured
            with open(args.json, "w") as f:
                json.dump({"settings": vars(args), "description": lines, "rows": rows}, f, indent=2)
    print()
    print("\n".join(lines))
    print_table(rows)


if __name__ == "__main__":
    main()
