"""Training losses for calibrated classification: GCE and the calibration-paper baselines.

Every loss has a functional core ``fn(logits [B, K], targets [B], **hyperparameters) -> per-sample losses [B]``;
batch-level terms (GCE's class-level regulariser, MMCE) are spread over the samples so that the *mean* of the
returned vector is the published batch objective. The trial loop reduces (mean or sum, ``train.reduction``).

``LOSSES`` (declared in ``trainables.catalog``, implemented here) maps each name to an entry whose ``params``
(``trainables.registry.Param``) carry the default and valid range of every hyperparameter; their names are exactly
the keyword names of ``fn`` (the entry's ``impl``), so a YAML ``loss:`` section ``{name: gce, lam: 0.5}`` is checked against the registry and becomes ``gce(..., lam=0.5)``.
``build_loss(loss_cfg, num_classes)`` returns a ``Loss`` object (call, per-epoch hook, checkpointable state) that
the trial loop uses for every loss, stateful (AdaFocal) or not.

Formulas: docs/losses.md; notation z logits, p = softmax(z), p_t = p of the target class.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from gce_search.trainables.catalog import ADAFOCAL_GAMMA_MAX, ADAFOCAL_GAMMA_MIN, ADAFOCAL_SWITCH, LOSSES
from gce_search.trainables.registry import Param

__all__ = [
    "LOSSES",
    "Loss",
    "FunctionalLoss",
    "AdaFocal",
    "build_loss",
    "cross_entropy",
    "gce",
    "label_smoothing",
    "brier",
    "mmce",
    "focal",
    "flsd53",
    "dual_focal",
    "adafocal",
]


# --------------------------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------------------------

def _check_shapes(logits: torch.Tensor, targets: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """Shape and dtype checks (no device sync); returns int64 targets."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logits: expected a [B, K] tensor, got shape {shape}")
    if not logits.is_floating_point():
        raise ValueError(f"logits: expected a floating-point tensor, got dtype {logits.dtype}")
    batch, classes = logits.shape
    if batch == 0 or classes == 0:
        raise ValueError(f"logits: expected at least one sample and one class, got shape {tuple(logits.shape)}")
    if num_classes is not None and classes != num_classes:
        raise ValueError(f"logits: expected {num_classes} classes (the loss was built for num_classes="
                         f"{num_classes}), got shape {tuple(logits.shape)}")
    if not isinstance(targets, torch.Tensor) or targets.dim() != 1 or targets.shape[0] != batch:
        shape = tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__
        raise ValueError(f"targets: expected shape [{batch}] (one class index per row of logits "
                         f"{tuple(logits.shape)}), got {shape}")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise ValueError(f"targets: expected integer class indices, got dtype {targets.dtype}")
    return targets.long()


def _check_values(logits: torch.Tensor, targets: torch.Tensor) -> None:
    """Target range and finiteness, read back in one device sync."""
    classes = logits.shape[1]
    flags = torch.stack([
        targets.min() < 0,
        targets.max() >= classes,
        ~torch.isfinite(logits).all(),
    ]).tolist()
    if flags[0] or flags[1]:
        raise ValueError(f"targets: class indices must be in [0, {classes - 1}] for logits with {classes} classes, "
                         f"got min {int(targets.min())} and max {int(targets.max())}")
    if flags[2]:
        raise ValueError("logits: contain NaN or inf; valid: finite values")


def _checked(logits, targets, validate: bool) -> torch.Tensor:
    targets = _check_shapes(logits, targets)
    if validate:
        _check_values(logits, targets)
    return targets


def _target_log_prob(log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return log_probs.gather(1, targets[:, None]).squeeze(1)


def _one_minus_exp(log_p: torch.Tensor) -> torch.Tensor:
    """1 - p from log p, accurate near p = 1 and never exactly 0.

    The clamp keeps (1 - p)^gamma differentiable for 0 < gamma < 1 when p rounds to 1 (its derivative there is
    infinite, and inf * log(1) = NaN); the clamped entries get zero gradient, which is the limit of the loss.
    """
    return (-torch.expm1(log_p)).clamp_min(torch.finfo(log_p.dtype).tiny)


# --------------------------------------------------------------------------------------------------------------
# Hyperparameters (one Param per keyword, declared in trainables.catalog; the functions and YAML validation share them)
# --------------------------------------------------------------------------------------------------------------

_LAM_GCE = LOSSES["gce"].params["lam"]
_ALPHA = LOSSES["label_smoothing"].params["alpha"]
_LAM_MMCE = LOSSES["mmce"].params["lam"]
_MMCE_WEIGHTED = LOSSES["mmce"].params["weighted"]
_GAMMA_FOCAL = LOSSES["focal"].params["gamma"]
_GAMMA_DUAL = LOSSES["dual_focal"].params["gamma"]
_DUAL_OTHER = LOSSES["dual_focal"].params["other"]
_LAM_ADA = LOSSES["adafocal"].params["lam"]
_GAMMA_INIT_ADA = LOSSES["adafocal"].params["gamma_init"]
_BINS_ADA = LOSSES["adafocal"].params["n_bins"]
_BIN_BY_ADA = LOSSES["adafocal"].params["bin_by"]


def _hp(name: str, param: Param, value: Any) -> Any:
    return param.check(name, value)


# --------------------------------------------------------------------------------------------------------------
# Functional core
# --------------------------------------------------------------------------------------------------------------

def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, *, validate: bool = True) -> torch.Tensor:
    """-log p_t per sample."""
    targets = _checked(logits, targets, validate)
    return F.cross_entropy(logits, targets, reduction="none")


def _all_gather_rows(tensor: torch.Tensor, process_group) -> torch.Tensor:
    """Concatenate `tensor` from every rank of `process_group` along dim 0, differentiably.

    torch.distributed.nn.functional.all_gather's backward sums the gradients that every rank's loss sends to a
    shard and returns that sum to the shard's owner, so cross-rank terms reach this rank's parameters.
    Every rank must pass the same number of rows.
    """
    from torch.distributed.nn.functional import all_gather

    # torch 2.14 marks this public function deprecated in favour of the private
    # torch.distributed._functional_collectives; keep the public one and keep trial logs free of the notice.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_gather is deprecated",
                                category=FutureWarning)
        gathered = all_gather(tensor, group=process_group)
    return torch.cat(gathered, dim=0)


_LOG2_E = 1.0 / math.log(2.0)


def _exp_via_exp2(x: torch.Tensor) -> torch.Tensor:
    """exp(x) as exp2(x * log2 e).

    On CPU (torch 2.14, AVX512) torch.exp takes ~61 us per 100k float32 values and torch.exp2 ~14 us. The
    rounding of x * log2(e) adds a relative error of about |x| * 6e-8 (1e-7 for probabilities near 1, 5e-6 near
    float32's smallest normal), immaterial where it is used: column sums and gradients of GCE.
    """
    return torch.exp2(x * _LOG2_E)


# The unshifted fast path is taken when every row's sum of 2^(z log2 e) lies in this range: no overflow, and each
# row's largest term (>= 2^-60 / K) is far above float32's subnormals (below 2^-126).
_UNSHIFTED_ROW_SUM = (2.0 ** -60, 2.0 ** 60)


class _GCEFunction(torch.autograd.Function):
    """Single-process GCE with a hand-written backward.

    With P = softmax(z) (row-wise) and A = the batch-axis softmax of log P (A_jk = P_jk / sum_j' P_j'k), the
    gradient of sum_i g_i * gce_i w.r.t. the logits is ``G - P * rowsum(G)`` with
    ``G_jk = lam * A_jk * sum_{i: y_i = k} g_i - g_j * 1[k = y_j]``. When the columns are not shifted (A = P / N
    with N the column sums) this is ``P * (w_k - u_j) - g_j * 1[k = y_j]`` with ``w = lam * S / N`` (S_k the sum
    of g over the samples of class k) and ``u = P w - g``: one matrix-vector product and one pass over the batch.

    Forward, three paths. (1) CPU, logits of moderate size (every row sum of 2^(z log2 e) within
    _UNSHIFTED_ROW_SUM, i.e. |z| up to about 40): P = exp2(z log2 e) / rowsum, with no row maximum (two passes
    fewer than log-softmax), and log p(y|x) = z_y - log rowsum. (2) Otherwise log-softmax, then P from it.
    (3) When a column sum of P is tiny (a class whose probability underflows in every row, e.g. logits of
    magnitude 1e4) the columns are shifted by their maximum first. On accelerators (`always_shift`) path 2 with
    the shifted columns is always taken: deciding would cost a device sync.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, lam: float, always_shift: bool) -> torch.Tensor:
        work = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
        ctx.lam = lam
        ctx.input_dtype = logits.dtype
        tiny = torch.finfo(work.dtype).tiny ** 0.5
        log_batch = math.log(work.shape[0])
        if not always_shift:
            probs = _exp_via_exp2(work)
            row_sum = probs.sum(dim=1)
            low, high = torch.aminmax(row_sum)
            if _UNSHIFTED_ROW_SUM[0] < low.item() and high.item() < _UNSHIFTED_ROW_SUM[1]:
                probs.mul_(row_sum.reciprocal()[:, None])
                column_norm = probs.sum(dim=0)
                if column_norm.min().item() >= tiny:
                    target_log_prob = work.gather(1, targets[:, None]).squeeze_(1).sub_(row_sum.log_())
                    out = column_norm.log().sub_(log_batch).mul_(lam).index_select(0, targets).sub_(target_log_prob)
                    ctx.save_for_backward(probs, column_norm, targets)
                    ctx.columns_shifted = False
                    return out
        log_probs = F.log_softmax(work, dim=1)
        probs = _exp_via_exp2(log_probs)
        column_weights = probs
        column_norm = probs.sum(dim=0)
        shift = None
        if always_shift or bool((column_norm < tiny).any()):
            shift = log_probs.amax(dim=0)
            column_weights = _exp_via_exp2(log_probs - shift)
            column_norm = column_weights.sum(dim=0)  # >= 1: the column maximum contributes exp(0)
        log_class_mean = column_norm.log() - log_batch
        if shift is not None:
            log_class_mean = log_class_mean + shift
        out = log_class_mean[targets].mul_(lam).sub_(_target_log_prob(log_probs, targets))
        if shift is None:
            ctx.save_for_backward(probs, column_norm, targets)
            ctx.columns_shifted = False
        else:
            ctx.save_for_backward(probs, column_norm, targets, column_weights)
            ctx.columns_shifted = True
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        probs, column_norm, targets = ctx.saved_tensors[:3]
        grad_out = grad_out.to(probs.dtype)
        per_class = torch.zeros_like(column_norm).index_add_(0, targets, grad_out)
        weights = per_class.mul_(ctx.lam).div_(column_norm)
        if ctx.columns_shifted:
            grad = ctx.saved_tensors[3] * weights
            grad.scatter_add_(1, targets[:, None], -grad_out[:, None])
            grad.addcmul_(probs, grad.sum(dim=1, keepdim=True), value=-1.0)
        else:
            row_term = torch.mv(probs, weights).sub_(grad_out)
            grad = torch.sub(weights[None, :], row_term[:, None]).mul_(probs)
            grad.scatter_add_(1, targets[:, None], -grad_out[:, None])
        return grad.to(ctx.input_dtype), None, None, None


def gce(logits: torch.Tensor, targets: torch.Tensor, lam: float = 1.0, process_group=None, *,
        validate: bool = True) -> torch.Tensor:
    """Generative cross-entropy per sample: ``-log p(y_i|x_i) + lam * log( (1/|B|) sum_j p(y_i|x_j) )``.

    The second term is the log of the batch estimate of the class marginal p(y_i); with lam = 1 the loss is
    ``-log [p(y_i|x_i) / p_hat(y_i)]``, the negative log of the generative likelihood ratio p(x|y)/p(x), and lam = 0
    is cross-entropy. It is computed from log-softmax with a logsumexp over the batch axis of column y_i minus
    log|B|, so it stays finite for logits of magnitude 1e4 (a plain mean of softmax columns underflows to log 0).

    Batch coupling: each sample's value depends on every sample of the batch. With ``process_group`` (a
    torch.distributed group, e.g. the DDP group) the class marginal runs over the *global* batch: the local
    log-probabilities are all-gathered with the autograd-aware ``torch.distributed.nn.functional.all_gather``
    (every rank must pass the same local batch size), and the returned values are those of this rank's samples.

    Gradient scaling under DDP: reduce the local values with a *mean* over the local batch (size b) and let DDP
    average gradients over the W ranks, as for any loss. The all-gather's backward sums, onto each rank's shard,
    the gradients of every rank's local loss, so rank r's parameter gradient is d(sum_s L_s)/d theta through its
    own logits, and DDP's average gives (1/W) * sum_s (1/b) sum_{i in s} d gce_i / d theta
    = (1/(W b)) sum_{global i} d gce_i / d theta: exactly one process on the global batch of W*b samples with
    mean reduction. No extra factor is needed (multiplying by W would double-count the gathered terms). With
    ``train.reduction: sum`` the usual DDP rule applies: multiply the local sum by W to match one process summing
    over the global batch.
    """
    targets = _checked(logits, targets, validate)
    lam = float(_hp("lam", _LAM_GCE, lam))
    if process_group is None:
        return _GCEFunction.apply(logits, targets, lam, logits.device.type != "cpu")
    log_probs = F.log_softmax(logits, dim=1)
    nll = -_target_log_prob(log_probs, targets)
    batch_log_probs = _all_gather_rows(log_probs, process_group)
    log_class_mean = torch.logsumexp(batch_log_probs, dim=0) - math.log(batch_log_probs.shape[0])  # [K]
    return nll + lam * log_class_mean[targets]


def label_smoothing(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.05, *,
                    validate: bool = True) -> torch.Tensor:
    """``-sum_k q_k log p_k`` with ``q = (1 - alpha) * onehot + alpha / K`` (Szegedy 2016; Müller 2019)."""
    targets = _checked(logits, targets, validate)
    alpha = _hp("alpha", _ALPHA, alpha)
    log_probs = F.log_softmax(logits, dim=1)
    classes = logits.shape[1]
    return -(1.0 - alpha) * _target_log_prob(log_probs, targets) - (alpha / classes) * log_probs.sum(dim=1)


def brier(logits: torch.Tensor, targets: torch.Tensor, *, validate: bool = True) -> torch.Tensor:
    """``sum_k (p_k - onehot_k)^2`` per sample, summed over classes (not divided by K), as in Mukhoti 2020."""
    targets = _checked(logits, targets, validate)
    probs = F.softmax(logits, dim=1)
    p_target = probs.gather(1, targets[:, None]).squeeze(1)
    return (probs * probs).sum(dim=1) - 2.0 * p_target + 1.0


_MMCE_KERNEL_WIDTH = 0.4  # Laplacian kernel exp(-|r_i - r_j| / 0.4), Kumar et al. 2018 and Mukhoti's port


def _mmce_squared(confidence: torch.Tensor, correct: torch.Tensor, weighted: bool) -> torch.Tensor:
    kernel = torch.exp(-(confidence[:, None] - confidence[None, :]).abs() / _MMCE_KERNEL_WIDTH)
    if not weighted:
        # MMCE_m^2 = (1/N^2) sum_ij (c_i - r_i)(c_j - r_j) k(r_i, r_j)
        residual = correct - confidence
        return (residual[:, None] * residual[None, :] * kernel).sum() / confidence.shape[0] ** 2
    # MMCE_w^2 (Kumar 2018, eq. for the weighted variant): correct samples weighted by (1 - r), wrong ones by r,
    # each group normalised by its own size; it is the squared RKHS distance of the two weighted mean embeddings.
    # Their code returns 0 when either group is empty; so do we (masked, to avoid a device sync per step).
    n_correct = correct.sum()
    n_wrong = correct.numel() - n_correct
    both_groups = ((n_correct > 0) & (n_wrong > 0)).to(confidence.dtype)
    weight = torch.where(correct > 0, (1.0 - confidence) / n_correct.clamp_min(1.0),
                         -confidence / n_wrong.clamp_min(1.0))
    return both_groups * (weight[:, None] * weight[None, :] * kernel).sum()


def mmce(logits: torch.Tensor, targets: torch.Tensor, lam: float = 2.0, weighted: bool = True,
         process_group=None, *, validate: bool = True) -> torch.Tensor:
    """Cross-entropy plus ``lam * MMCE`` (Kumar, Sarawagi & Jain 2018), the batch-level MMCE spread over samples.

    ``MMCE = sqrt(MMCE^2)`` with r = top-1 confidence, c = 1[prediction correct] and the Laplacian kernel
    ``exp(-|r_i - r_j| / 0.4)``; ``weighted=True`` is MMCE_w (the variant Mukhoti 2020 trains with, lam = 2),
    ``weighted=False`` is MMCE_m: (1/N^2) sum_ij (c_i - r_i)(c_j - r_j) k(r_i, r_j). Every sample carries the same
    batch term, so the batch mean is ``mean CE + lam * MMCE``. Gradients flow through r (as in the authors' code);
    c is not differentiable. ``process_group`` computes MMCE over the global batch (all-gathered confidences),
    with the same DDP gradient scaling as ``gce`` (mean over the local batch, DDP averaging, no extra factor).
    """
    targets = _checked(logits, targets, validate)
    lam = _hp("lam", _LAM_MMCE, lam)
    weighted = _hp("weighted", _MMCE_WEIGHTED, weighted)
    log_probs = F.log_softmax(logits, dim=1)
    nll = -_target_log_prob(log_probs, targets)
    top_log_prob, predicted = log_probs.max(dim=1)
    confidence = top_log_prob.exp()
    correct = (predicted == targets).to(logits.dtype)
    if process_group is not None:
        confidence = _all_gather_rows(confidence, process_group)
        correct = _all_gather_rows(correct, process_group).detach()
    # Clamp below at 1e-12 instead of adding an epsilon: the value is exact wherever MMCE^2 >= 1e-12 and the
    # square root's infinite slope at 0 never reaches the gradient (MMCE^2 >= 0 in exact arithmetic: PSD kernel).
    calibration_term = _mmce_squared(confidence, correct, weighted).clamp_min(1e-12).sqrt()
    return nll + lam * calibration_term


def _focal_from_log_pt(log_pt: torch.Tensor, gamma) -> torch.Tensor:
    return -torch.pow(_one_minus_exp(log_pt), gamma) * log_pt


def focal(logits: torch.Tensor, targets: torch.Tensor, gamma: float = 3.0, *, validate: bool = True) -> torch.Tensor:
    """Focal loss ``-(1 - p_t)^gamma log p_t`` (Lin et al. 2017); gamma = 0 is cross-entropy."""
    targets = _checked(logits, targets, validate)
    gamma = _hp("gamma", _GAMMA_FOCAL, gamma)
    return _focal_from_log_pt(_target_log_prob(F.log_softmax(logits, dim=1), targets), gamma)


FLSD53_SWITCH = 0.2  # Mukhoti et al. 2020: gamma = 5 for p_t in [0, 0.2), 3 for p_t in [0.2, 1]


def flsd53(logits: torch.Tensor, targets: torch.Tensor, *, validate: bool = True) -> torch.Tensor:
    """Sample-dependent focal loss FLSD-53 (Mukhoti et al. 2020): gamma = 5 if p_t < 0.2, else 3.

    The choice of gamma is a schedule, not part of the gradient.
    """
    targets = _checked(logits, targets, validate)
    log_pt = _target_log_prob(F.log_softmax(logits, dim=1), targets)
    with torch.no_grad():
        gamma = torch.where(log_pt.exp() < FLSD53_SWITCH, 5.0, 3.0).to(log_pt.dtype)
    return _focal_from_log_pt(log_pt, gamma)


def dual_focal(logits: torch.Tensor, targets: torch.Tensor, gamma: float = 5.0, other: str = "below_target", *,
               validate: bool = True) -> torch.Tensor:
    """Dual focal loss ``-(1 - p_t + p_j)^gamma log p_t`` (Tao, Dong & Xu 2023).

    ``other="below_target"`` (default) takes p_j as the largest probability strictly below p_t, 0 when p_t is the
    smallest: the paper's "largest logit ranked after the ground-truth logit" and its official code
    (``torch.lt(p, p_t)`` mask then top-1). ``other="largest"`` takes the largest non-target probability. The two
    agree whenever the target is the strict argmax, which is most of training; they differ on misclassified
    samples, where "largest" makes the base exceed 1. Gradients flow through p_t and p_j.
    """
    targets = _checked(logits, targets, validate)
    gamma = _hp("gamma", _GAMMA_DUAL, gamma)
    other = _hp("other", _DUAL_OTHER, other)
    log_probs = F.log_softmax(logits, dim=1)
    probs = log_probs.exp()
    log_pt = _target_log_prob(log_probs, targets)
    p_t = log_pt.exp()
    if other == "largest":
        candidates = probs.scatter(1, targets[:, None], 0.0)
    else:
        candidates = probs * (probs < p_t[:, None].detach())
    p_other = candidates.max(dim=1).values
    base = (1.0 - p_t + p_other).clamp_min(torch.finfo(logits.dtype).tiny)
    return -torch.pow(base, gamma) * log_pt


def adafocal(logits: torch.Tensor, targets: torch.Tensor, gamma, *, validate: bool = True) -> torch.Tensor:
    """AdaFocal's per-sample loss for given signed gammas (a number or a [B] tensor), Ghosh et al. 2022.

    gamma >= 0: focal ``-(1 - p_t)^gamma log p_t``; gamma < 0: inverse focal ``-(1 + p_t)^|gamma| log p_t``, which
    raises the weight of confident samples and so pushes an underconfident bin up. The per-bin gammas and their
    update live in the stateful ``AdaFocal`` loss (registry name ``adafocal``).
    """
    targets = _checked(logits, targets, validate)
    log_pt = _target_log_prob(F.log_softmax(logits, dim=1), targets)
    if not isinstance(gamma, torch.Tensor):
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not math.isfinite(gamma):
            raise ValueError(f"gamma: expected a finite number or a [{logits.shape[0]}] tensor, got {gamma!r}")
        gamma = torch.full_like(log_pt, float(gamma))
    elif gamma.shape != log_pt.shape:
        raise ValueError(f"gamma: expected a number or a tensor of shape [{logits.shape[0]}], "
                         f"got shape {tuple(gamma.shape)}")
    gamma = gamma.to(log_pt.dtype).detach()
    p_t = log_pt.exp()
    base = torch.where(gamma >= 0, _one_minus_exp(log_pt), 1.0 + p_t)
    return -torch.pow(base, gamma.abs()) * log_pt


# --------------------------------------------------------------------------------------------------------------
# Loss objects (what the trial loop holds)
# --------------------------------------------------------------------------------------------------------------

class Loss:
    """A per-sample training loss with an end-of-epoch hook and checkpointable state.

    ``__call__(logits, targets) -> [B]``; ``on_epoch_end(val_logits, val_targets)`` (no-op unless the loss adapts);
    ``state_dict()`` / ``load_state_dict(d)`` hold plain tensors and numbers (``torch.load(weights_only=True)``).
    """

    name: str = ""

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def on_epoch_end(self, val_logits: torch.Tensor, val_targets: torch.Tensor) -> None:
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"loss {self.name!r} has no state; got keys {sorted(state)}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class FunctionalLoss(Loss):
    """A stateless loss: its functional core with fixed hyperparameters.

    By default the per-call value checks (target range, finite logits) are off: they cost a device sync per step,
    and the trial loop already stops on a non-finite loss. Shape checks (free) stay on.
    """

    def __init__(self, name: str, fn: Callable, params: dict, num_classes: int | None = None,
                 process_group=None, validate: bool = False):
        self.name = name
        self.fn = fn
        self.params = dict(params)
        self.num_classes = num_classes
        self.validate = validate
        self._extra = {"process_group": process_group} if process_group is not None else {}

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        _check_shapes(logits, targets, self.num_classes)
        return self.fn(logits, targets, **self.params, **self._extra, validate=self.validate)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"FunctionalLoss({self.name!r}{', ' if args else ''}{args})"


class AdaFocal(Loss):
    """AdaFocal (Ghosh, Schaaf & Gormley, NeurIPS 2022): focal loss with one gamma per confidence bin, adapted
    once per epoch from the calibration gap on the validation split.

    ``on_epoch_end(val_logits, val_targets)``: the validation top-1 confidences are cut into ``n_bins`` equal-mass
    bins (edges at their quantiles); in bin b with mean confidence C_b and accuracy A_b,
    ``gamma_b <- gamma_b * exp(lam * (C_b - A_b))`` when gamma_b > 0 (overconfident bins focus more), and
    ``gamma_b <- gamma_b * exp(-lam * (C_b - A_b))`` when gamma_b <= 0, so that |gamma_b| of an inverse-focal bin
    grows while the bin stays underconfident (the official code's rule; docs/losses.md gives the gamma > 0 case).
    A result with |gamma_b| < 0.2 switches family: positive -> -0.2 (inverse focal), otherwise -> +0.2; then gamma is
    clipped to [-2, 20]. Empty bins (ties) keep their gamma apart from the switch and the clip.

    ``__call__``: each training sample takes the gamma of the validation bin its ``bin_by`` probability falls in
    (bin b holds values in [edge_b, edge_{b+1}); the first and last bins are open-ended). The official code bins
    training samples by p_t (``bin_by="target_prob"``, the default); ``bin_by="confidence"`` uses the top-1
    probability, which is the same for correctly classified samples. Before the first update every bin holds
    ``gamma_init`` on equal-width edges, as in the official code.
    """

    name = "adafocal"

    def __init__(self, lam: float = 1.0, gamma_init: float = 1.0, n_bins: int = 15, bin_by: str = "target_prob",
                 *, num_classes: int | None = None, validate: bool = True):
        self.lam = float(_hp("lam", _LAM_ADA, lam))
        self.gamma_init = float(_hp("gamma_init", _GAMMA_INIT_ADA, gamma_init))
        self.n_bins = int(_hp("n_bins", _BINS_ADA, n_bins))
        self.bin_by = _hp("bin_by", _BIN_BY_ADA, bin_by)
        self.num_classes = num_classes
        self.validate = validate
        self.gammas = torch.full((self.n_bins,), self.gamma_init, dtype=torch.float64)
        self.inner_edges = torch.arange(1, self.n_bins, dtype=torch.float64) / self.n_bins
        self.updates = 0
        self._device_cache: tuple | None = None

    def _on_device(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        cache = self._device_cache
        if cache is None or cache[0] != (device, dtype):
            cache = ((device, dtype), self.gammas.to(device, dtype), self.inner_edges.to(device, dtype))
            self._device_cache = cache
        return cache[1], cache[2]

    def gamma_for(self, values: torch.Tensor) -> torch.Tensor:
        """The gamma of the bin each value (a probability) falls in."""
        gammas, edges = self._on_device(values.device, values.dtype)
        return gammas[torch.searchsorted(edges, values.contiguous(), right=True)]

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = _check_shapes(logits, targets, self.num_classes)
        if self.validate:
            _check_values(logits, targets)
        with torch.no_grad():
            log_probs = F.log_softmax(logits.detach(), dim=1)
            if self.bin_by == "target_prob":
                values = _target_log_prob(log_probs, targets).exp()
            else:
                values = log_probs.max(dim=1).values.exp()
            gamma = self.gamma_for(values)
        return adafocal(logits, targets, gamma, validate=False)

    def bin_statistics(self, val_logits: torch.Tensor, val_targets: torch.Tensor):
        """(inner edges [n_bins-1], mean confidence [n_bins], accuracy [n_bins], count [n_bins]) of the
        equal-mass validation bins, in float64 (empty bins: confidence = accuracy = 0)."""
        val_targets = _check_shapes(val_logits, val_targets, self.num_classes)
        _check_values(val_logits, val_targets)
        with torch.no_grad():
            probs = F.softmax(val_logits.detach().to(torch.float64), dim=1)
            confidence, predicted = probs.max(dim=1)
            correct = (predicted == val_targets).to(torch.float64)
            quantiles = torch.arange(1, self.n_bins, dtype=torch.float64, device=confidence.device) / self.n_bins
            edges = torch.quantile(confidence, quantiles) if self.n_bins > 1 else quantiles
            bins = torch.searchsorted(edges, confidence, right=True)
            count = torch.zeros(self.n_bins, dtype=torch.float64, device=confidence.device)
            count.index_add_(0, bins, torch.ones_like(confidence))
            sum_conf = torch.zeros_like(count).index_add_(0, bins, confidence)
            sum_correct = torch.zeros_like(count).index_add_(0, bins, correct)
            safe = count.clamp_min(1.0)
        return edges.cpu(), (sum_conf / safe).cpu(), (sum_correct / safe).cpu(), count.cpu()

    def on_epoch_end(self, val_logits: torch.Tensor, val_targets: torch.Tensor) -> None:
        edges, mean_conf, accuracy, count = self.bin_statistics(val_logits, val_targets)
        gap = torch.where(count > 0, mean_conf - accuracy, torch.zeros_like(mean_conf))
        old = self.gammas
        new = torch.where(old > 0, old * torch.exp(self.lam * gap), old * torch.exp(-self.lam * gap))
        small = new.abs() < ADAFOCAL_SWITCH
        new = torch.where(small, torch.where(new > 0, -ADAFOCAL_SWITCH, ADAFOCAL_SWITCH), new)
        self.gammas = new.clamp(ADAFOCAL_GAMMA_MIN, ADAFOCAL_GAMMA_MAX)
        self.inner_edges = edges
        self.updates += 1
        self._device_cache = None

    def state_dict(self) -> dict:
        return {"gammas": self.gammas.clone(), "inner_edges": self.inner_edges.clone(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        expected = {"gammas": (self.n_bins,), "inner_edges": (self.n_bins - 1,)}
        missing = [k for k in (*expected, "updates") if k not in state]
        if missing:
            raise ValueError(f"adafocal state: missing keys {missing}; valid: gammas, inner_edges, updates")
        for key, shape in expected.items():
            value = torch.as_tensor(state[key], dtype=torch.float64)
            if tuple(value.shape) != shape:
                raise ValueError(f"adafocal state: {key} has shape {tuple(value.shape)}, expected {shape} "
                                 f"for n_bins={self.n_bins}")
        self.gammas = torch.as_tensor(state["gammas"], dtype=torch.float64).detach().cpu().clone()
        self.inner_edges = torch.as_tensor(state["inner_edges"], dtype=torch.float64).detach().cpu().clone()
        self.updates = int(state["updates"])
        self._device_cache = None

    def __repr__(self) -> str:
        return (f"AdaFocal(lam={self.lam}, gamma_init={self.gamma_init}, n_bins={self.n_bins}, "
                f"bin_by={self.bin_by!r}, updates={self.updates})")


# --------------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------------

for _name, _impl in (("cross_entropy", cross_entropy), ("gce", gce), ("label_smoothing", label_smoothing),
                     ("brier", brier), ("mmce", mmce), ("focal", focal), ("flsd53", flsd53),
                     ("dual_focal", dual_focal), ("adafocal", AdaFocal)):
    # a stateless loss: the functional core (logits, targets, **params, validate=...) -> [B]; a stateful one
    # (trait `stateful`): the Loss class, whose constructor takes **params plus keyword-only num_classes, validate
    LOSSES.implements(_name)(_impl)
del _name, _impl


def build_loss(loss_cfg: dict, num_classes: int, process_group=None) -> Loss:
    """The ``Loss`` for a ``loss:`` config section ``{name: <LOSSES key>, <param>: value, ...}``.

    Missing parameters take their registry defaults; unknown or out-of-range ones raise ValueError naming
    ``loss.<param>``. ``process_group`` goes to batch-coupled losses (gce, mmce) so that their batch terms run over
    the global DDP batch; other losses ignore it.
    """
    if not isinstance(loss_cfg, dict):
        raise ValueError(f"loss: expected a mapping with a 'name' key, got {loss_cfg!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes: expected an integer >= 1, got {num_classes!r}")
    name = loss_cfg.get("name")
    info = LOSSES.get(name)
    params = {}
    for key, value in loss_cfg.items():
        if key == "name":
            continue
        if key not in info.params:
            valid = ", ".join(info.params) or "none"
            raise ValueError(f"loss.{key}: not a parameter of loss {name!r}; valid: {valid}")
        params[key] = info.params[key].check(f"loss.{key}", value)
    for key, param in info.params.items():
        params.setdefault(key, param.default)
    if info.stateful:
        return info.impl(**params, num_classes=num_classes, validate=False)
    return FunctionalLoss(name, info.impl, params, num_classes=num_classes,
                          process_group=process_group if info.batch_coupled else None)
