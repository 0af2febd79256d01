"""The PyTorch side of benchmarks/compare_torch.py's train step: fer_flax's preprocessing and recipe
augmentation written in batched PyTorch, one SGD step of a PyTorch model, eager or with the model under
`torch.compile`."""

from __future__ import annotations

import contextlib
import functools
import math

import jax.numpy as jnp
import torch
import torch.nn.functional as F

from benchmarks.torch_models import (
    count_flax_params,
    count_torch_params,
    decay_param_groups,
    load_flax_variables,
    torch_model_like,
)
from fer_flax.core.augment import ERASE_RATIO, MEAN, STD

# ---------------------------------------------------------------------------------- torch step


def torch_preprocess(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 1, 48, 48] -> float32, `(x/255 - MEAN) / STD` as fer_flax.core.augment.preprocess."""
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


def compiled_model(model, *, mode: str = "default", backend: str = "inductor"):
    """`model` under `torch.compile` (TorchDynamo graphs, AOTAutograd's backward, Inductor's kernels by
    default): the forward and backward passes of `make_torch_step` then run compiled, the SGD update
    stays eager. The parameters are `model`'s own, so an optimizer over them trains both."""
    return torch.compile(model, mode=mode, backend=backend)


def torch_twins(
    setup,
    config,
    *,
    modes,
    device,
    memory_format,
    augment,
    dtype,
    learning_rates,
    compile_options: dict | None = None,
):
    """For each of `modes` ("eager", "compile"): a PyTorch twin of fer_flax's model in `setup`
    (`benchmarks.train_step_setup.build_train_step`) with its initial weights (the parameter counts
    checked), its own SGD optimizer and one-step function on `setup`'s batch, so every mode starts
    from the same network and does the same updates. `compile_options` go to `compiled_model` (mode,
    backend). Returns ({mode: step}, PyTorch parameters)."""
    model, state, o = setup.model, setup.state, config.optim
    flax_params = count_flax_params(state.params)
    out = {}
    for mode in modes:
        # The PyTorch network is described by the float32 module (autocast supplies the compute dtype).
        tmodel = torch_model_like(model.clone(dtype=jnp.float32) if dtype != "float32" else model)
        torch_params = count_torch_params(tmodel)
        assert torch_params == flax_params, (
            f"{type(model).__name__}: the PyTorch model has {torch_params:,} parameters, fer_flax's "
            f"{flax_params:,}"
        )
        load_flax_variables(tmodel, {"params": state.params, "batch_stats": state.batch_stats})
        tmodel = tmodel.to(device=device, memory_format=memory_format).train()
        optimizer = torch.optim.SGD(
            decay_param_groups(tmodel, o.weight_decay), lr=o.lr, momentum=o.momentum, nesterov=o.nesterov
        )
        out[mode] = make_torch_step(
            compiled_model(tmodel, **(compile_options or {})) if mode == "compile" else tmodel,
            optimizer,
            torch.from_numpy(setup.images).permute(0, 3, 1, 2).contiguous().to(device),
            torch.from_numpy(setup.labels).long().to(device),
            memory_format=memory_format,
            label_smoothing=config.label_smoothing,
            augment=config.augment if augment else None,
            learning_rates=learning_rates,
            autocast_dtype={"float32": None, "bfloat16": torch.bfloat16}[dtype],
        )
    return out, torch_params
