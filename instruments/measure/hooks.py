"""Taps: record what a model computes, by layer name, for the length of a `with` block.

    with Taps(model, activations=["actor.torso.1"], gradients=["actor.torso.0"],
              policy_and_value=True) as taps:
        logits, value = model(obs)
        loss.backward()
    taps.activations["actor.torso.1"]     # (N, 64), detached copy of that layer's output
    taps.grad_stats["actor.torso.0"].norm  # L2 norm of d loss / d (that layer's output)
    taps.probs, taps.value                 # softmax of the model's logits, the critic's value

How it attaches, and why:
- Activations: a forward hook per named module stores a detached *copy* of its output. The copy
  matters: a following `nn.ReLU(inplace=True)` overwrites the very tensor the hook saw, so a bare
  `detach()` would record the post-ReLU values under the Linear's name.
- Gradients: the same forward hook calls `output.register_hook(...)`, which fires on backward
  with d loss / d output. Full backward module hooks (`register_full_backward_hook`) are not used:
  they wrap the output in a `BackwardHookFunction` view, and a following in-place op then raises
  "Output 0 of BackwardHookFunction is a view and is being modified inplace".
- Policy and value: a forward hook on the model itself reads its `(logits, value)` output.

Hook the eager module and call that module inside the block. Hooks added to a `torch.compile`d
module (or to the module it wraps, after compiling) may never fire, since the compiled graph does
not go through `Module.__call__` for each layer; a compiled wrapper is refused with a TypeError.

Memory: nothing grows with the number of batches. `keep="last"` (default) keeps the last call's
tensors; `keep="stats"` keeps only running per-unit moments (count, mean, variance, fraction of
positive values) and no tensors of any batch. Gradient statistics (last and running mean / max of
the norm) are scalars in both modes.

Every hook is removed in `__exit__`, also when the block raises; the model is left exactly as it
was. A gradient hook that fires after the block has exited (a backward on a graph built inside it)
records nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch import nn

KEEP_MODES = ("last", "stats")


class RunningMoments:
    """Per-unit streaming moments over the rows (dim 0) of every batch seen, in constant memory.

    Batches are merged with Chan et al.'s pairwise update, so the mean and variance equal those of
    all rows concatenated. Updates are out of place, so tensors first seen under
    `torch.inference_mode` can be merged with later ones.
    """

    def __init__(self):
        self.count = 0
        self.mean: torch.Tensor | None = None
        self._m2: torch.Tensor | None = None
        self._positive: torch.Tensor | None = None

    def update(self, batch: torch.Tensor) -> None:
        x = batch.detach().float()
        if x.dim() == 0:
            x = x.reshape(1)
        n = x.shape[0]
        if n == 0:
            return
        # Sums of deviations from a shift near the mean (the running mean, or the batch's first row)
        # keep s2 - s1^2 / n free of cancellation; plain sums over dim 0 are several times faster
        # on CPU than var_mean there.
        shift = x[0] if self.count == 0 else self.mean
        d = x - shift
        s1, s2 = d.sum(dim=0), (d * d).sum(dim=0)
        batch_mean = shift + s1 / n
        batch_m2 = (s2 - s1 * s1 / n).clamp_min(0)
        batch_positive = (x > 0).view(torch.uint8).sum(dim=0, dtype=torch.int32)
        if self.count == 0:
            self.mean, self._m2, self._positive = batch_mean, batch_m2, batch_positive.long()
        else:
            total = self.count + n
            delta = batch_mean - self.mean
            self.mean = self.mean + delta * (n / total)
            self._m2 = self._m2 + batch_m2 + delta**2 * (self.count * n / total)
            self._positive = self._positive + batch_positive.long()
        self.count += n

    @property
    def var(self) -> torch.Tensor:
        """Population variance of each unit over all rows seen."""
        return self._m2 / self.count

    @property
    def std(self) -> torch.Tensor:
        return self.var.sqrt()

    @property
    def fraction_positive(self) -> torch.Tensor:
        """Share of rows in which each unit was > 0: a ReLU unit at 0 is dead on this data."""
        return self._positive.float() / self.count


@dataclass
class GradStats:
    """Statistics of d loss / d (a layer's output), as 0-d tensors (no host sync in the hook).

    `norm` and `mean_abs` describe the last backward pass; the running fields every pass seen.
    """

    calls: int = 0
    norm: torch.Tensor | None = None  # L2 norm over the whole batch, last backward
    mean_abs: torch.Tensor | None = None  # mean |gradient| over all elements, last backward
    norm_sum: torch.Tensor | None = field(default=None, repr=False)
    norm_max: torch.Tensor | None = None
    mean_abs_sum: torch.Tensor | None = field(default=None, repr=False)

    def update(self, grad: torch.Tensor) -> None:
        g = grad.detach().float()
        self.norm, self.mean_abs = torch.linalg.vector_norm(g), g.abs().mean()
        if self.calls == 0:
            self.norm_sum, self.norm_max, self.mean_abs_sum = self.norm, self.norm, self.mean_abs
        else:
            self.norm_sum = self.norm_sum + self.norm
            self.norm_max = torch.maximum(self.norm_max, self.norm)
            self.mean_abs_sum = self.mean_abs_sum + self.mean_abs
        self.calls += 1

    @property
    def mean_norm(self) -> torch.Tensor:
        return self.norm_sum / self.calls

    @property
    def mean_mean_abs(self) -> torch.Tensor:
        return self.mean_abs_sum / self.calls


def layer_names(model: nn.Module) -> list[str]:
    """The names `Taps` accepts: every submodule's dotted name (the model itself excluded). A
    module registered under two names (a layer the actor and critic share) answers to both."""
    return [name for name, _ in model.named_modules(remove_duplicate=False) if name]


def _check_names(model: nn.Module, requested: Iterable[str], what: str) -> list[str]:
    requested = list(requested)
    valid = layer_names(model)
    known = set(valid)
    unknown = [name for name in requested if name not in known]
    if unknown:
        raise ValueError(f"unknown layer name(s) for {what}: {', '.join(map(repr, unknown))}; "
                         f"valid names: {', '.join(valid)}")
    return requested


class Taps:
    """Context manager that records activations, output gradients, and the policy and value.

    Args:
        model: the eager `nn.Module` to watch (not a `torch.compile` wrapper).
        activations: layer names whose outputs to record.
        gradients: layer names whose output gradients to record on backward.
        policy_and_value: record `softmax(logits)` and `value` from the model's `(logits, value)`.
        keep: "last" keeps the last call's tensors; "stats" keeps running per-unit moments only.

    After a forward (and backward) inside the block, read:
        keep="last":  `activations[name]`, `gradients[name]`, `logits`, `probs`, `value`
        keep="stats": `activation_stats[name]`, `probs_stats`, `value_stats` (`RunningMoments`)
        both:         `grad_stats[name]` (`GradStats`)
    The records stay readable after the block; `reset()` clears them.
    """

    def __init__(self, model: nn.Module, activations: Iterable[str] = (), gradients: Iterable[str] = (),
                 policy_and_value: bool = False, keep: str = "last"):
        if hasattr(model, "_orig_mod"):
            raise TypeError("Taps attach to eager modules: hooks on a torch.compile'd module may never fire. "
                            "Pass the original module (compiled._orig_mod) and call it, not the compiled "
                            "wrapper, inside the with-block.")
        if keep not in KEEP_MODES:
            raise ValueError(f"keep must be one of {', '.join(KEEP_MODES)}, got {keep!r}")
        self.model = model
        self.activation_names = _check_names(model, activations, "activations")
        self.gradient_names = _check_names(model, gradients, "gradients")
        self.policy_and_value = policy_and_value
        self.keep = keep
        self._handles: list = []
        self._active = False
        self.reset()

    # --- records ---------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget everything recorded so far."""
        self.activations: dict[str, torch.Tensor] = {}
        self.gradients: dict[str, torch.Tensor] = {}
        self.activation_stats = {name: RunningMoments() for name in self.activation_names} \
            if self.keep == "stats" else {}
        self.grad_stats = {name: GradStats() for name in self.gradient_names}
        self.logits: torch.Tensor | None = None
        self.value: torch.Tensor | None = None
        self.probs_stats = RunningMoments() if self.keep == "stats" and self.policy_and_value else None
        self.value_stats = RunningMoments() if self.keep == "stats" and self.policy_and_value else None

    @property
    def probs(self) -> torch.Tensor | None:
        """The policy's action probabilities from the last forward (keep="last")."""
        return None if self.logits is None else torch.softmax(self.logits, dim=-1)

    # --- context manager -------------------------------------------------------------------------

    def __enter__(self) -> "Taps":
        if self._active:
            raise RuntimeError("these Taps are already attached; use a new Taps object to nest")
        modules = dict(self.model.named_modules(remove_duplicate=False))
        try:
            for name in dict.fromkeys(self.activation_names + self.gradient_names):
                self._handles.append(modules[name].register_forward_hook(self._layer_hook(name)))
            if self.policy_and_value:
                self._handles.append(self.model.register_forward_hook(self._output_hook))
        except BaseException:
            self._remove()
            raise
        self._active = True
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._remove()
        return False  # never swallow the block's exception

    def _remove(self) -> None:
        try:
            while self._handles:
                self._handles.pop().remove()
        finally:
            self._active = False

    # --- hooks -----------------------------------------------------------------------------------

    def _layer_hook(self, name: str):
        record_activation = name in self.activation_names
        record_gradient = name in self.gradient_names

        def hook(module, inputs, output):
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"Taps can only record tensor outputs; {name!r} returned {type(output).__name__}")
            if record_activation:
                if self.keep == "last":
                    # A copy: an in-place op after this layer would change a detached view.
                    self.activations[name] = output.detach().clone()
                else:
                    self.activation_stats[name].update(output)
            if record_gradient and output.requires_grad:
                output.register_hook(self._gradient_hook(name))

        return hook

    def _gradient_hook(self, name: str):
        def hook(grad):
            if self._active:  # a backward after the block has exited records nothing
                self.grad_stats[name].update(grad)
                if self.keep == "last":
                    self.gradients[name] = grad.detach().clone()
            return None  # never change the gradient

        return hook

    def _output_hook(self, module, inputs, output):
        if not (isinstance(output, tuple) and len(output) == 2):
            raise TypeError("policy_and_value=True needs a model whose forward returns (logits, value)")
        logits, value = output[0].detach(), output[1].detach()
        if self.keep == "last":
            self.logits, self.value = logits.clone(), value.clone()
        else:
            self.probs_stats.update(torch.softmax(logits.float(), dim=-1))
            self.value_stats.update(value)
