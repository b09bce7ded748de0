"""Saliency: which cells of the 10x10 frame the policy's choice (or the critic's value) depends on.

One entry point per method, each batched over frames and shaped like its input (N, 4, 10, 10):

    gradient_saliency(model, frames)            # d logit[action] / d frame           (Simonyan 2014)
    smoothgrad(model, frames)                   # gradient averaged over noisy frames (Smilkov 2017)
    integrated_gradients(model, frames)         # path integral from a blank frame    (Sundararajan 2017)
    occlusion_saliency(model, frames)           # flip each cell, watch the output    (Greydanus 2018)
    reduce_channels(maps)                       # (N, 4, 10, 10) -> (N, 10, 10) for display
    parameter_randomisation_check(model, frames, method)   # does the map depend on the weights? (Adebayo 2018)

`target="action"` explains the logit of `action` (an int, an (N,) tensor, or None for each frame's
most probable action); `target="value"` explains the critic's value. The model is any module whose
`forward(obs)` returns `(logits (N, A), value (N,))`; it is only called, never modified.

Frames may come straight from a `torch.inference_mode` rollout: inference tensors cannot be made to
require grad, so each method clones them under `torch.inference_mode(False)` first, which also makes
the methods work when called from inside an inference-mode block.

Per-frame gradients come from one backward pass of the *sum* of the targets over the batch, which
is exact as long as frames do not interact inside the model (no batch norm in training mode);
ActorCritic has no such layer.
"""

from __future__ import annotations

import copy
import heapq
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import torch
from torch import nn

from breakout_ppo.env import LIVE_FRAME_CELLS

TARGETS = ("action", "value")
IG_RULES = ("trapezoid", "riemann_left", "riemann_right", "riemann_middle")
PERTURBATIONS = ("flip", "zero")
OCCLUSION_CELLS = ("channel", "cell")
CHANNEL_REDUCTIONS = ("abs_max", "abs_sum", "sum")

SaliencyMethod = Callable[[nn.Module, torch.Tensor], torch.Tensor]
"""`method(model, frames (N, ...)) -> maps (N, ...)`: what the sanity check judges."""


# ---------------------------------------------------------------------------------------------
# Shared plumbing


@contextmanager
def _autograd_on():
    """Gradients on, even inside `torch.inference_mode` or `torch.no_grad` blocks."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def _plain_copy(frames: torch.Tensor) -> torch.Tensor:
    """A float copy that is not an inference tensor (call under `_autograd_on`)."""
    return frames.detach().clone().float()


def _resolve_action(model, frames: torch.Tensor, target: str, action) -> torch.Tensor | None:
    """The (N,) int64 actions to explain: the given ones, or each frame's most probable action."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    if target == "value":
        return None
    n = frames.shape[0]
    if action is None:
        with torch.no_grad():
            logits, _ = model(frames)
        return logits.argmax(dim=-1)
    return _given_action(action, n, frames.device)


def _given_action(action, n: int, device) -> torch.Tensor:
    """(N,) int64, always a fresh copy: an inference-mode index cannot be saved for backward."""
    action = torch.as_tensor(action, device=device).long()
    return action.expand(n).clone() if action.dim() == 0 else action.reshape(n).clone()


def _target_output(model, x: torch.Tensor, target: str, action: torch.Tensor | None) -> torch.Tensor:
    """(N,) one scalar per frame: the chosen action's logit, or the value."""
    logits, value = model(x)
    if target == "value":
        return value.reshape(-1)
    return logits.gather(1, action.view(-1, 1)).squeeze(1)


def _gradients(model, inputs: torch.Tensor, target: str, action, batch_size: int) -> torch.Tensor:
    """d target / d input for every row of `inputs`, `batch_size` rows per backward pass."""
    grads = torch.empty_like(inputs)
    for start in range(0, inputs.shape[0], batch_size):
        rows = slice(start, start + batch_size)
        x = inputs[rows].detach().requires_grad_(True)
        out = _target_output(model, x, target, None if action is None else action[rows])
        (grads[rows],) = torch.autograd.grad(out.sum(), x)
    return grads


# ---------------------------------------------------------------------------------------------
# Gradient methods


def gradient_saliency(model, frames: torch.Tensor, target: str = "action", action=None,
                      batch_size: int = 65536) -> torch.Tensor:
    """Vanilla gradient saliency: d output / d frame, signed, (N, 4, 10, 10).

    Simonyan, Vedaldi & Zisserman 2014, "Deep Inside Convolutional Networks: Visualising Image
    Classification Models and Saliency Maps" (arXiv:1312.6034). For a binary frame the gradient at
    an empty cell says how the output would move if an object appeared there.
    """
    with _autograd_on():
        x = _plain_copy(frames)
        action = _resolve_action(model, x, target, action)
        return _gradients(model, x, target, action, batch_size)


def smoothgrad(model, frames: torch.Tensor, target: str = "action", action=None, samples: int = 50,
               noise: float = 0.15, seed: int = 0, batch_size: int = 16384) -> torch.Tensor:
    """SmoothGrad: the gradient averaged over `samples` noisy copies of each frame, (N, 4, 10, 10).

    Smilkov, Thorat, Kim, Viegas & Wattenberg 2017, "SmoothGrad: removing noise by adding noise"
    (arXiv:1706.03825). The noise is Gaussian with standard deviation `noise` times the frame's
    value range (1 for a binary frame; the paper finds 10-20% works well). The explained action is
    fixed from the clean frame, so every sample explains the same output. Deterministic for a seed.
    """
    with _autograd_on():
        x = _plain_copy(frames)
        action = _resolve_action(model, x, target, action)
        n = x.shape[0]
        span = (x.flatten(1).amax(1) - x.flatten(1).amin(1)).view(n, *([1] * (x.dim() - 1)))
        sigma = noise * span
        generator = torch.Generator(x.device).manual_seed(seed)
        total = torch.zeros_like(x)
        per_chunk = max(1, batch_size // n)
        for start in range(0, samples, per_chunk):
            k = min(per_chunk, samples - start)
            eps = torch.randn((k, *x.shape), generator=generator, device=x.device)
            noisy = (x + sigma * eps).reshape(k * n, *x.shape[1:])
            repeated = None if action is None else action.repeat(k)
            total += _gradients(model, noisy, target, repeated, k * n).view(k, *x.shape).sum(0)
        return total / samples


def _path_points(steps: int, rule: str, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions alpha in [0, 1] along the path and their quadrature weights (summing to 1)."""
    if steps < 1:
        raise ValueError(f"steps must be positive, got {steps}")
    k = torch.arange(steps, dtype=torch.float64, device=device)
    if rule == "trapezoid":
        alphas = torch.arange(steps + 1, dtype=torch.float64, device=device) / steps
        weights = torch.full((steps + 1,), 1.0 / steps, dtype=torch.float64, device=device)
        weights[[0, -1]] /= 2
    elif rule == "riemann_left":
        alphas, weights = k / steps, torch.full_like(k, 1.0 / steps)
    elif rule == "riemann_right":
        alphas, weights = (k + 1) / steps, torch.full_like(k, 1.0 / steps)
    elif rule == "riemann_middle":
        alphas, weights = (k + 0.5) / steps, torch.full_like(k, 1.0 / steps)
    else:
        raise ValueError(f"rule must be one of {', '.join(IG_RULES)}, got {rule!r}")
    return alphas, weights


def integrated_gradients(model, frames: torch.Tensor, target: str = "action", action=None,
                         baseline: torch.Tensor | None = None, steps: int = 64, rule: str = "riemann_middle",
                         batch_size: int = 16384) -> torch.Tensor:
    """Integrated Gradients from a baseline frame (default: the empty frame), (N, 4, 10, 10).

    Sundararajan, Taly & Yan 2017, "Axiomatic Attribution for Deep Networks" (ICML, arXiv:1703.01365):
    attribution = (x - x') * integral over a in [0, 1] of d f / d x at x' + a (x - x'), with the
    integral taken by the midpoint rule (or the trapezoid rule, or a left/right Riemann sum) over
    `steps` intervals. Completeness: the attributions of a frame sum to f(x) - f(x'), up to the
    quadrature error, which shrinks as `steps` grows. The explained action is fixed from the real
    frame.

    The midpoint rule is the default because it never evaluates the gradient at the path's ends: for
    a ReLU network with zero biases (a fresh init) every unit sits exactly on its kink at the zero
    frame, where autograd takes the gradient as 0, and the trapezoid rule's weight on that point
    becomes an error of 1 / (2 steps) of f(x) - f(0).
    """
    with _autograd_on():
        x = _plain_copy(frames)
        action = _resolve_action(model, x, target, action)
        base = torch.zeros_like(x) if baseline is None else _plain_copy(baseline).expand_as(x)
        delta = x - base
        alphas, weights = _path_points(steps, rule, x.device)
        n = x.shape[0]
        avg_grad = torch.zeros_like(x, dtype=torch.float64)
        per_chunk = max(1, batch_size // n)
        for start in range(0, len(alphas), per_chunk):
            a = alphas[start:start + per_chunk].float()
            k = len(a)
            points = (base + a.view(k, *([1] * x.dim())) * delta).reshape(k * n, *x.shape[1:])
            repeated = None if action is None else action.repeat(k)
            grads = _gradients(model, points, target, repeated, k * n).view(k, *x.shape).double()
            w = weights[start:start + k].view(k, *([1] * x.dim()))
            avg_grad += (w * grads).sum(0)
        return (delta.double() * avg_grad).float()


# ---------------------------------------------------------------------------------------------
# Perturbation


class Occlusion(NamedTuple):
    """Change of each output when a cell is perturbed: original minus perturbed (KL is >= 0).

    Each field is (N, 4, 10, 10) for `cells="channel"` (one cell of one channel at a time) or
    (N, 1, 10, 10) for `cells="cell"` (a cell in all channels at once).
    """

    logit: torch.Tensor  # logit[action](x) - logit[action](x perturbed): > 0 where the cell supported it
    kl: torch.Tensor  # KL(pi(x) || pi(x perturbed)): how much the whole policy moved
    value: torch.Tensor  # V(x) - V(x perturbed)


def _occlusion_masks(cells: str, frame_shape, device) -> torch.Tensor:
    """(P, C, H, W) bool: one perturbation per row."""
    c, h, w = frame_shape
    if cells == "channel":
        return torch.eye(c * h * w, dtype=torch.bool, device=device).view(-1, c, h, w)
    if cells == "cell":
        return torch.eye(h * w, dtype=torch.bool, device=device).view(-1, 1, h, w).expand(-1, c, h, w)
    raise ValueError(f"cells must be one of {', '.join(OCCLUSION_CELLS)}, got {cells!r}")


@torch.no_grad()
def occlusion_saliency(model, frames: torch.Tensor, action=None, perturbation: str = "flip",
                       cells: str = "channel", batch_size: int = 16384) -> Occlusion:
    """Perturbation saliency: perturb one cell at a time and measure how the outputs change.

    The perturbation family of Greydanus, Koul, Dodge & Fern 2018, "Visualizing and Understanding
    Atari Agents" (ICML, arXiv:1711.00138), who blur a patch of an 84x84 Atari frame and measure
    the change in the policy's logits and in the value; occlusion itself goes back to Zeiler & Fergus
    2014. On a 10x10 binary frame a patch is a cell and blurring means little, so a cell is
    flipped (0 <-> 1: "what if the ball were here / were not here") or zeroed (an empty cell then
    scores exactly 0). Each perturbation is one extra forward pass: N * 400 rows for
    `cells="channel"`, N * 100 for `cells="cell"`, run `batch_size` rows at a time. No gradients are
    needed, so inference tensors are used as they are.
    """
    if perturbation not in PERTURBATIONS:
        raise ValueError(f"perturbation must be one of {', '.join(PERTURBATIONS)}, got {perturbation!r}")
    x = frames.float()
    n = x.shape[0]
    masks = _occlusion_masks(cells, x.shape[1:], x.device)
    p = masks.shape[0]
    logits0, value0 = model(x)
    action = logits0.argmax(dim=-1) if action is None else _given_action(action, n, x.device)
    logp0 = torch.log_softmax(logits0, dim=-1)
    logit_change = torch.empty(n, p, device=x.device)
    kl = torch.empty(n, p, device=x.device)
    value_change = torch.empty(n, p, device=x.device)
    per_chunk = max(1, batch_size // p)
    for start in range(0, n, per_chunk):
        rows = slice(start, start + per_chunk)
        xs = x[rows].unsqueeze(1)  # (k, 1, C, H, W) against masks (P, C, H, W)
        if perturbation == "flip":
            perturbed = torch.where(masks, 1.0 - xs, xs)
        else:
            perturbed = torch.where(masks, torch.zeros_like(xs), xs)
        k = perturbed.shape[0]
        logits, value = model(perturbed.reshape(k * p, *x.shape[1:]))
        logits, value = logits.view(k, p, -1), value.view(k, p)
        chosen = logits.gather(2, action[rows].view(k, 1, 1).expand(k, p, 1)).squeeze(2)
        logit_change[rows] = logits0[rows].gather(1, action[rows].view(k, 1)) - chosen
        lp0 = logp0[rows].unsqueeze(1)
        kl[rows] = (lp0.exp() * (lp0 - torch.log_softmax(logits, dim=-1))).sum(-1)
        value_change[rows] = value0[rows].view(k, 1) - value
        # A perturbation that changed nothing (zeroing an empty cell) changes nothing: exactly 0,
        # not the rounding noise of a matmul over a differently shaped batch.
        unchanged = (perturbed == xs).flatten(2).all(dim=2)
        for change in (logit_change, kl, value_change):
            change[rows] = change[rows].masked_fill(unchanged, 0.0)
    shape = (n, -1, *x.shape[2:])
    return Occlusion(logit_change.view(shape), kl.view(shape), value_change.view(shape))


# ---------------------------------------------------------------------------------------------
# Display


def reduce_channels(saliency: torch.Tensor, how: str = "abs_max") -> torch.Tensor:
    """(N, C, 10, 10) -> (N, 10, 10), one number per cell.

    "abs_max" (default) is Simonyan et al.'s choice for colour images, the largest |s| over the
    channels; "abs_sum" adds them up; "sum" keeps the sign (e.g. Integrated Gradients, whose sum
    over everything is f(x) - f(baseline)).
    """
    if saliency.dim() != 4:
        raise ValueError(f"expected (N, C, H, W) saliency, got shape {tuple(saliency.shape)}")
    if how == "abs_max":
        return saliency.abs().amax(dim=1)
    if how == "abs_sum":
        return saliency.abs().sum(dim=1)
    if how == "sum":
        return saliency.sum(dim=1)
    raise ValueError(f"how must be one of {', '.join(CHANNEL_REDUCTIONS)}, got {how!r}")


# ---------------------------------------------------------------------------------------------
# Sanity check


def rank_with_ties(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..D along the last dimension of (N, D), ties given their average rank (float64)."""
    x = x.detach().double()
    n, d = x.shape
    sorted_x, order = x.sort(dim=1)
    new_group = torch.ones_like(sorted_x, dtype=torch.bool)
    new_group[:, 1:] = sorted_x[:, 1:] != sorted_x[:, :-1]
    group = new_group.long().cumsum(dim=1) - 1 + d * torch.arange(n, device=x.device).view(n, 1)
    position = torch.arange(1, d + 1, dtype=torch.float64, device=x.device).expand(n, d)
    sums = torch.zeros(n * d, dtype=torch.float64, device=x.device).index_add_(0, group.flatten(), position.flatten())
    counts = torch.zeros(n * d, dtype=torch.float64, device=x.device).index_add_(
        0, group.flatten(), torch.ones(n * d, dtype=torch.float64, device=x.device))
    average = (sums / counts.clamp_min(1))[group]
    return torch.empty_like(average).scatter_(1, order, average)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of each row of `a` with the same row of `b`: (N, ...) -> (N,).

    The Pearson correlation of the tie-averaged ranks; NaN for a row that is constant in a or b.
    """
    ra, rb = rank_with_ties(a.flatten(1)), rank_with_ties(b.flatten(1))
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    denominator = (ra.square().sum(1) * rb.square().sum(1)).sqrt()
    return (ra * rb).sum(1) / denominator  # 0 / 0 = NaN for constant rows


def layers_from_output(model: nn.Module, frames: torch.Tensor) -> list[list[str]]:
    """Parameterised leaf layers grouped by depth from the output, the output side first.

    Depth is the fewest parameterised layers between a layer's output and any model output in the
    autograd graph of one forward pass, so parallel towers are peeled together: for ActorCritic,
    [[actor.head, critic.head], [actor.torso.3, critic.torso.3], [actor.torso.1, critic.torso.1]].
    A layer the towers share is one layer, listed once under the actor's name.
    """
    leaves = {name: m for name, m in model.named_modules()
              if next(m.children(), None) is None and next(m.parameters(recurse=False), None) is not None}
    node_of: dict = {}
    handles = []

    def tag(name):
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor) and output.grad_fn is not None:
                node_of[output.grad_fn] = name
        return hook

    try:
        for name, module in leaves.items():
            handles.append(module.register_forward_hook(tag(name)))
        with _autograd_on():
            outputs = model(_plain_copy(frames[:1]).requires_grad_(True))
    finally:
        for handle in handles:
            handle.remove()
    outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)

    # Shortest paths from the outputs where crossing a tagged node (a layer's output) costs 1.
    depth_of_node: dict = {}
    roots = [t.grad_fn for t in outputs if isinstance(t, torch.Tensor) and t.grad_fn is not None]
    queue = [(0, i, node) for i, node in enumerate(roots)]
    pushed = len(queue)
    while queue:
        depth, _, node = heapq.heappop(queue)
        if node in depth_of_node:
            continue
        depth_of_node[node] = depth
        below = depth + (1 if node in node_of else 0)
        for nxt, _ in node.next_functions:
            if nxt is not None and nxt not in depth_of_node:
                heapq.heappush(queue, (below, pushed, nxt))  # the counter breaks ties: nodes don't compare
                pushed += 1
    layer_depth: dict[str, int] = {}
    for node, name in node_of.items():
        if node in depth_of_node:
            layer_depth[name] = min(layer_depth.get(name, depth_of_node[node]), depth_of_node[node])
    order = list(leaves)
    groups: dict[int, list[str]] = {}
    for name in sorted(layer_depth, key=lambda name: (layer_depth[name], order.index(name))):
        groups.setdefault(layer_depth[name], []).append(name)
    return [groups[d] for d in sorted(groups)]


def _randomise(module: nn.Module, seed: int) -> None:
    """Re-initialise a layer's weights with its own default init (or a matching normal), seeded."""
    devices = sorted({p.device.index or 0 for p in module.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
        else:
            with torch.no_grad():
                for p in module.parameters(recurse=False):
                    p.normal_(0.0, float(p.std()) if p.numel() > 1 else 1.0)


@dataclass
class SanityCheck:
    """Result of the cascading parameter-randomisation test of one saliency method."""

    steps: list[list[str]]  # layers randomised at each step (cumulatively: step k includes 0..k-1)
    per_frame: torch.Tensor  # (steps, N) Spearman correlation with the trained model's map
    threshold: float

    @property
    def correlations(self) -> torch.Tensor:
        """(steps,) mean correlation over frames (NaN frames, with a constant map, left out)."""
        return self.per_frame.nanmean(dim=1)

    @property
    def passed(self) -> bool:
        """The map has changed once every listed layer is random: correlation below the threshold."""
        final = self.correlations[-1]
        return bool(torch.isfinite(final)) and float(final) < self.threshold

    def __str__(self) -> str:
        lines = [f"{'randomised down to':<36} {'spearman':>9}"]
        for step, rho in zip(self.steps, self.correlations.tolist()):
            lines.append(f"{' + '.join(step):<36} {rho:>9.3f}")
        verdict = "passes" if self.passed else "FAILS: the map does not depend on the weights"
        lines.append(f"verdict (final < {self.threshold:g}): {verdict}")
        return "\n".join(lines)


def parameter_randomisation_check(model: nn.Module, frames: torch.Tensor, method: SaliencyMethod,
                                  layers: Sequence[str | Sequence[str]] | None = None, threshold: float = 0.5,
                                  absolute: bool = True, seed: int = 0,
                                  cells: slice | None = LIVE_FRAME_CELLS) -> SanityCheck:
    """Judge a saliency *method* by the cascading parameter-randomisation test.

    Adebayo, Gilmer, Muelly, Goodfellow, Hardt & Kim 2018, "Sanity Checks for Saliency Maps"
    (NeurIPS, arXiv:1810.03292): re-initialise the layers cumulatively from the output side down,
    on a deep copy of the model, and compare each randomised model's maps with the trained model's
    by Spearman rank correlation (per frame, of |map| when `absolute`, as their figures do). A
    method whose maps stay the same while the weights that compute the output are destroyed is not
    explaining the model (an edge detector, or the input itself, passes that off as saliency).

    `method(model, frames) -> maps`. `layers` lists the steps, each a layer name or a group of
    names; by default `layers_from_output`. The verdict passes when the mean correlation after the
    last step is below `threshold`. The model itself is not touched.

    On binary frames, methods that multiply by (x - baseline), Gradient x Input and Integrated
    Gradients from the empty frame, are exactly 0 on every empty cell whatever the weights, so
    over the 400 cells their rank correlation stays near 1 and the check flags them: where their map
    is non-zero is the frame's doing, and only the ordering among the occupied cells is the
    model's (Adebayo et al. report Gradient x Input as input-dominated too).

    Maps are compared over `cells` of the flattened frame, by default the run that Breakout frames
    can light (`LIVE_FRAME_CELLS`): the MLP's first layer skips the other 150, so every method's map
    is 0 there for any weights, ties that would lift every correlation. `None` compares all cells.
    """
    steps = layers_from_output(model, frames) if layers is None else \
        [[step] if isinstance(step, str) else list(step) for step in layers]
    modules = dict(model.named_modules(remove_duplicate=False))
    unknown = [name for step in steps for name in step if name not in modules]
    if unknown:
        raise ValueError(f"unknown layer name(s): {', '.join(unknown)}; valid: {', '.join(n for n in modules if n)}")
    if not steps:
        raise ValueError("no layers to randomise")

    def maps_of(m):
        maps = method(m, frames).detach().flatten(1)
        if cells is not None:
            if maps.shape[1] != frames[0].numel():
                raise ValueError("`cells` picks cells of whole-frame maps; pass cells=None for other shapes")
            maps = maps[:, cells]
        return maps.abs() if absolute else maps

    reference = maps_of(model)
    randomised = copy.deepcopy(model)
    random_modules = dict(randomised.named_modules(remove_duplicate=False))
    per_frame = []
    for index, step in enumerate(steps):
        for offset, name in enumerate(step):
            _randomise(random_modules[name], seed + 1000 * index + offset)
        per_frame.append(spearman(reference, maps_of(randomised)).float())
    return SanityCheck(steps, torch.stack(per_frame), threshold)
