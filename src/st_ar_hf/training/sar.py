"""Scale-wise objectives: teacher forcing (VAR / FlexVAR pre-training) and SAR's post-training (arXiv 2512.06421),
`L = L_TF + sigma * L_CSF`.

Teacher forcing feeds every scale the ground-truth codes of the scale before it and averages the cross-entropy
uniformly over all tokens of all scales. SAR adds Stagger-Scale Rollout: under `no_grad`, the teacher-forced logits of
each scale become tokens (argmax, or a draw with SAR's own guidance ramp and top-k / top-p), which are turned into the
*next* scale's input as the ground truth would be; one more forward on these staggered inputs gives student-forced
predictions, and the contrastive student-forcing loss is their cross-entropy against the teacher-forced tokens of the
same scale (detached), or against the ground truth in the ablation (`rollout_targets="ground_truth"`).

Two readings of the rollout (methods.md §C.4):
- `rollout_scales="last"` (the released code, GengzeZhou/SAR `train_step_tf_then_single_sf_tf`): only the penultimate
  scale is rolled out, to the last; the student-forced pass is `[class] + last scale`, a `[1, s_K]` schedule with no
  start embedding and no earlier-scale context. FlexVAR only (VAR learns positions for its own schedule).
- `rollout_scales="all"` (the paper's figure): every scale k >= 1 gets the rollout of scale k - 1, in one forward
  over the whole staggered sequence with the block-causal mask.
"""

import random
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from st_ar_hf.pipelines.sampling import exponential_noise, filter_logits, race

ROLLOUT_SCALES = ("last", "all")
ROLLOUT_TARGETS = ("teacher", "ground_truth")


def flexvar_schedule(patch_nums: Sequence[int], rng=random) -> list[int]:
    """FlexVAR's random training schedule (`gen_curr_patch_nums`), for the trained schedule `patch_nums` ending at
    side S with at most L = sum(s^2) tokens. With 5% probability `patch_nums` itself; otherwise [1, 2], then
    `len(patch_nums) - 5` distinct sides from 3 .. patch_nums[-3] and 2 from patch_nums[-3] + 1 .. S - 1, then S;
    one middle scale dropped with probability 10%, more with 5%, 2%, 1%; then scales among the last four (never the
    first) dropped at random until at most L tokens remain (which may drop S, or the 2). For VAR's (1, 2, 3, 4, 5, 6, 8, 10, 13, 16) these are
    FlexVAR's draws exactly: 5 of 3..10, 2 of 11..15."""
    patch_nums = list(patch_nums)
    max_tokens, split, last = sum(s * s for s in patch_nums), patch_nums[-3], patch_nums[-1]
    if rng.random() < 0.05:
        return patch_nums
    middle = rng.sample(range(3, split + 1), len(patch_nums) - 5) + rng.sample(range(split + 1, last), 2)
    scales = [1, 2, *sorted(middle), last]
    draw = rng.random()
    for threshold in (0.9, 0.95, 0.98, 0.99):
        if draw > threshold and len(scales) > 3:  # a middle scale is left to drop (short schedules)
            scales.pop(rng.choice(range(2, len(scales) - 1)))
    while sum(s * s for s in scales) > max_tokens:
        scales.pop(rng.choice(range(max(len(scales) - 4, 1), len(scales))))  # never the 1 (short schedules)
    return scales


def check_flexvar_schedule(patch_nums: Sequence[int]) -> None:
    """The schedules `flexvar_schedule` can draw from exist: a ValueError naming `patch_nums` otherwise."""
    patch_nums = list(patch_nums)
    if len(patch_nums) < 5 or patch_nums[:2] != [1, 2] or patch_nums[-3] - 2 < len(patch_nums) - 5 \
            or patch_nums[-1] - patch_nums[-3] - 1 < 2:
        raise ValueError(f"random_scales: FlexVAR's schedule sampler needs patch_nums starting [1, 2], at least 5 sides, "
                         f"len - 5 sides available in 3..patch_nums[-3] and 2 between patch_nums[-3] and the last; got "
                         f"{patch_nums}")


def encode_scales(vqvae, model_type: str, pixel_values: torch.Tensor, scales: Sequence[int]) -> list[torch.LongTensor]:
    """Pixels [B, 3, H, W] -> ground-truth code maps [B, s_k, s_k] of each scale: VAR's residual quantisation, or
    FlexVAR's independent quantisation of the area-downsampled latent."""
    if model_type == "var":
        return vqvae.encode(pixel_values, list(scales))
    return vqvae.encode_scales(pixel_values, list(scales))


def scale_inputs(vqvae, model_type: str, maps: list[torch.LongTensor], rolled_out: list[torch.LongTensor] | None = None
                 ) -> torch.Tensor:
    """The transformer's inputs [B, L - 1, C] of scales 1 .. K-1 from the code maps of scales 0 .. K-2: FlexVAR
    upsamples map k's (normalised) code vectors bicubically to side s_{k+1}; VAR area-downsamples its reconstruction
    after scales 0 .. k. With `rolled_out` (maps of scales 0 .. K-2), scale k+1's input comes from rolled_out[k]
    over the ground truth of the scales before k (one rollout step, never recursive)."""
    scales = [m.shape[-1] for m in maps]
    inputs, f_hat = [], None
    for k in range(len(scales) - 1):
        codes = maps[k] if rolled_out is None else rolled_out[k]
        if model_type == "var":
            _, next_input = vqvae.next_scale_input(f_hat, vqvae.code_vectors(codes), k, scales)
            f_hat, _ = vqvae.next_scale_input(f_hat, vqvae.code_vectors(maps[k]), k, scales)
        else:
            next_input = F.interpolate(vqvae.code_vectors(codes), size=(scales[k + 1],) * 2, mode="bicubic")
            next_input = next_input.flatten(2).transpose(1, 2)
        inputs.append(next_input)
    return torch.cat(inputs, dim=1)


class RolloutSampling(NamedTuple):
    """SAR's sampled rollout (`sf_use_sampling`): guidance on the teacher-forced logits of scale k with
    t = guidance_scale * (1 + k / (K - 1)) / 2 as `(1 + t) cond - t uncond` (0 disables it; then the teacher-forced
    pass needs no null-class half), then top-k / top-p and a draw."""

    guidance_scale: float = 1.2
    top_k: int = 900
    top_p: float = 0.96


def rollout_tokens(logits: torch.Tensor, scales: Sequence[int], sampling: RolloutSampling | None) -> torch.LongTensor:
    """Teacher-forced logits [B, L, V] (or [2B, L, V], [cond; null], with guided sampling) -> tokens [B, L]."""
    if sampling is None:
        return logits.argmax(-1)
    tokens, start, batch = [], 0, logits.shape[0] // (2 if sampling.guidance_scale else 1)
    for k, side in enumerate(scales):
        scale_logits = logits[:, start : start + side * side]
        if sampling.guidance_scale:
            t = sampling.guidance_scale * 0.5 * (1 + k / (len(scales) - 1))
            cond, uncond = scale_logits.chunk(2)
            scale_logits = (1 + t) * cond - t * uncond
        flat = filter_logits(scale_logits.flatten(0, 1), sampling.top_k, sampling.top_p)  # [B s^2, V]
        noise = exponential_noise(None, flat.shape, flat.device)  # the global RNG: accelerate's checkpoints restore it
        tokens.append(race(flat, noise).view(batch, side * side))
        start += side * side
    return torch.cat(tokens, dim=1)


class ScaleWiseObjective:
    """Teacher forcing, plus SAR's contrastive student-forcing term when `sigma > 0`. Returns the named terms:
    `tf` (all tokens), `tf_last` / `tf_rest` (the last scale and the others, logged only), and with SAR `csf` and
    `rollout_agreement` (the rolled-out tokens' agreement with the ground truth, logged only); `loss` is the sum
    `tf + sigma * csf`."""

    def __init__(self, config, sigma: float = 0.0, rollout_scales: str = "last", rollout_targets: str = "teacher",
                 label_smoothing: float = 0.0, sampling: RolloutSampling | None = None):
        """config: the transformer's `VARConfig` / `FlexVARConfig` (the model may be wrapped for DDP)."""
        if sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        if rollout_scales not in ROLLOUT_SCALES:
            raise ValueError(f"rollout_scales must be one of {ROLLOUT_SCALES}, got {rollout_scales!r}")
        if rollout_targets not in ROLLOUT_TARGETS:
            raise ValueError(f"rollout_targets must be one of {ROLLOUT_TARGETS}, got {rollout_targets!r}")
        if config.model_type == "var" and sigma > 0 and rollout_scales == "last":
            raise ValueError("rollout_scales 'last' runs a [1, s_K] schedule, which VAR's per-position embeddings cannot")
        self.model_type, self.null_class_id = config.model_type, config.null_class_id
        self.sigma, self.rollout_scales, self.rollout_targets = sigma, rollout_scales, rollout_targets
        self.label_smoothing, self.sampling = label_smoothing, sampling

    def cross_entropy(self, logits: torch.Tensor, targets: torch.LongTensor, reduction: str = "mean") -> torch.Tensor:
        """logits [B, T, V], targets [B, T] -> the mean over all tokens, or with reduction "none" the loss of each
        token [B T]."""
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), label_smoothing=self.label_smoothing,
                               reduction=reduction)

    def __call__(self, model, vqvae, maps: list[torch.LongTensor], class_labels: torch.LongTensor) -> dict[str, torch.Tensor]:
        """maps: ground-truth code maps [B, s_k, s_k] of this step's schedule; class_labels [B]."""
        model_type = self.model_type
        scales, batch = [m.shape[-1] for m in maps], class_labels.shape[0]
        targets = torch.cat([m.flatten(1) for m in maps], dim=1)  # [B, L]
        with torch.no_grad():  # the inputs are data: no gradient reaches the tokenizer
            inputs = scale_inputs(vqvae, model_type, maps)  # [B, L - 1, C]
        guided = self.sigma > 0 and self.sampling is not None and self.sampling.guidance_scale != 0
        if guided:  # the rollout's guidance needs the null class's logits too
            null = torch.full_like(class_labels, self.null_class_id)
            logits = model(torch.cat([class_labels, null]), inputs.repeat(2, 1, 1), scales=scales).logits
        else:
            logits = model(class_labels, inputs, scales=scales).logits  # [B, L, V]
        teacher_logits, last = logits[:batch], scales[-1] ** 2
        token_losses = self.cross_entropy(teacher_logits, targets, reduction="none").view(batch, -1)  # [B, L]
        terms = {"tf": token_losses.mean(), "tf_last": token_losses[:, -last:].detach().mean(),
                 "tf_rest": token_losses[:, :-last].detach().mean()}  # one pass over the logits serves all three
        if self.sigma == 0:
            terms["loss"] = terms["tf"]
            return terms

        with torch.no_grad():
            rolled = rollout_tokens(logits.detach(), scales, self.sampling)  # [B, L]
            rolled_maps = [part.view(batch, side, side) for part, side in zip(rolled.split([s * s for s in scales], 1), scales)]
            terms["rollout_agreement"] = (rolled[:, :-last] == targets[:, :-last]).float().mean()
        sf_targets = rolled if self.rollout_targets == "teacher" else targets
        if self.rollout_scales == "all":
            with torch.no_grad():
                student_inputs = scale_inputs(vqvae, model_type, maps, rolled_out=rolled_maps[:-1])
            student_logits = model(class_labels, student_inputs, scales=scales).logits[:, 1:]  # scales 1 .. K-1
            terms["csf"] = self.cross_entropy(student_logits, sf_targets[:, 1:])
        else:  # penultimate -> last scale, alone after the class token
            with torch.no_grad():
                student_input = scale_inputs(vqvae, model_type, maps[-2:], rolled_out=rolled_maps[-2:-1])
            student_logits = model(class_labels, student_input, scales=[1, scales[-1]], with_start_embedding=False).logits
            terms["csf"] = self.cross_entropy(student_logits[:, 1:], sf_targets[:, -last:])
        terms["loss"] = terms["tf"] + self.sigma * terms["csf"]
        return terms


__all__ = ["ROLLOUT_SCALES", "ROLLOUT_TARGETS", "RolloutSampling", "ScaleWiseObjective", "check_flexvar_schedule",
           "encode_scales", "flexvar_schedule", "rollout_tokens", "scale_inputs"]
