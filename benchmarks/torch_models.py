"""PyTorch twins of fer_flax's CNN, BeefyModel and ResNet families for benchmarks/compare_torch.py:
the same layers and parameter counts, fer_flax's trained variables copied in (`load_flax_variables`),
and fer_flax's weight-decay rule as optimizer parameter groups."""

from __future__ import annotations

import functools
from collections import OrderedDict

import jax
import numpy as np
import torch
import torch.nn.functional as F
from flax import traverse_util
from torch import nn

from fer_flax.data.splits import IMAGE_SIZE
from fer_flax.models.layers import BATCH_NORM_MOMENTUM

# flax.linen.BatchNorm's default epsilon (and torch's).
BN_EPS = 1e-5

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
    """fer_flax.core.optim.weight_decay_mask's rule: decay conv and linear weights (flax "kernel"s) only."""
    decay, no_decay = [], []
    for mod in model.modules():
        for name, p in mod.named_parameters(recurse=False):
            is_kernel = isinstance(mod, nn.Conv2d | nn.Linear) and name == "weight"
            (decay if is_kernel else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
