"""ST-AR's objective (arXiv 2509.15185): next-token prediction plus masked-attention feature prediction (L_MIM) and
inter-step / inter-view contrastive losses (L_step, L_view) against an EMA teacher.

    L = w_ar * L_AR + w_mim * L_MIM + w_step * L_step + w_view * L_view

The paper writes beta * (L_step + L_view) with alpha = 1, beta = 0.5, i.e. w_mim = 1, w_step = w_view = 0.5; a
weight of 0 switches a term off (and w_mim = 0 also drops the attention mask). Where the paper is silent, the
choices are ours and are arguments: the mask is sampled once per sequence and shared by all layers; L_AR is computed
on the masked student pass by default (`ar_pass`, below); features for L_MIM
are the last layer's output before the final norm; the projector is Linear-GELU-Linear on the student side only;
similarities are cosine with temperature 0.2 (MoCo v3); negatives are the teacher features of every other image
in the global batch (gathered across processes, as MoCo v3 does).

`ar_pass` says which student pass L_AR reads when the attention mask is on (L_MIM > 0):
- "masked": the masked pass, so one student forward serves every term, as the paper's Fig. 3 draws it; the model is
  trained with a quarter of its keys hidden and generates with none.
- "unmasked": a second, plain student pass for L_AR (one more forward and backward of the student per step; both
  passes run as one forward over the batch and its copy).
- "split": one forward in which only the even sequences of the batch are masked (with two views: the first view of
  every image); L_MIM reads those, L_AR the plain ones, the contrastive terms all (no extra cost; each of L_AR and
  L_MIM sees half the sequences).
"""

AR_PASSES = ("masked", "unmasked", "split")

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


def random_key_mask(batch_size: int, seq_len: int, mask_ratio: float, num_prefix: int, dtype: torch.dtype,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """Additive attention bias [B, 1, T, T] hiding round(mask_ratio * (T - num_prefix)) random key positions per
    sequence from every query, except the prefix (class) positions and each query's own position, so that no
    softmax row is empty. Uses the global torch RNG (restored on resume)."""
    num_masked = round(mask_ratio * (seq_len - num_prefix))
    scores = torch.rand(batch_size, seq_len - num_prefix, device=device)
    masked_keys = torch.zeros(batch_size, seq_len, dtype=torch.bool, device=device)
    masked_keys[:, num_prefix:] = scores.argsort(dim=1).argsort(dim=1) < num_masked  # [B, T]
    own_position = torch.eye(seq_len, dtype=torch.bool, device=device)  # [T, T]
    hidden = masked_keys[:, None, :] & ~own_position  # [B, T(query), T(key)]
    return torch.zeros(hidden.shape, dtype=dtype, device=device).masked_fill(hidden, torch.finfo(dtype).min)[:, None]


def cosine_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean of 1 - cos(student, teacher) over all leading positions of [..., D] features."""
    return (1 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()


def info_nce(anchors: torch.Tensor, keys: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor,
             temperature: float) -> torch.Tensor:
    """InfoNCE with several positives per anchor: the mean over (anchor a, positive p) pairs of
    -log(exp(s_ap) / (exp(s_ap) + sum_n exp(s_an))), s = cosine / temperature.

    anchors [N, D], keys [M, D]; positives and negatives are boolean [N, M] masks. An anchor without negatives
    contributes 0 per pair (its softmax has one entry)."""
    similarity = F.normalize(anchors.float(), dim=-1) @ F.normalize(keys.float(), dim=-1).T / temperature  # [N, M]
    negative_lse = similarity.masked_fill(~negatives, float("-inf")).logsumexp(dim=1, keepdim=True)  # [N, 1]
    pair_losses = F.softplus(negative_lse - similarity)  # -log(e^s / (e^s + e^lse)) for every (anchor, key)
    return pair_losses[positives].mean()


def contrastive_masks(image_ids: torch.Tensor, view_ids: torch.Tensor, position_ids: torch.Tensor,
                      key_image_ids: torch.Tensor, key_view_ids: torch.Tensor, key_position_ids: torch.Tensor):
    """Boolean [N, M] masks (step positives, view positives, negatives) from the ids of N anchors and M keys:
    L_step pairs the same image and view at another position, L_view the same image and position in another view,
    and the negatives are all features of other images."""
    same_image = image_ids[:, None] == key_image_ids[None, :]
    same_view = view_ids[:, None] == key_view_ids[None, :]
    same_position = position_ids[:, None] == key_position_ids[None, :]
    return same_image & same_view & ~same_position, same_image & ~same_view & same_position, ~same_image


class STARObjective(nn.Module):
    """Computes the named loss terms of a batch of token sequences [B images, V views, T tokens].

    Holds the trainable projector (student side); the student and the EMA teacher are passed in, so that the
    exported model and the teacher stay separate modules.
    """

    def __init__(self, hidden_size: int, ar_weight: float = 1.0, mim_weight: float = 1.0, step_weight: float = 0.5,
                 view_weight: float = 0.5, mask_ratio: float = 0.25, contrastive_layer: int = 6, num_positions: int = 4,
                 temperature: float = 0.2, projector_hidden_size: int | None = None, ar_pass: str = "masked"):
        super().__init__()
        if ar_pass not in AR_PASSES:
            raise ValueError(f"--ar_pass must be one of {AR_PASSES}, got {ar_pass!r}")
        self.ar_pass = ar_pass
        self.weights = {"ar": ar_weight, "mim": mim_weight, "step": step_weight, "view": view_weight}
        self.mask_ratio, self.contrastive_layer = mask_ratio, contrastive_layer
        self.num_positions, self.temperature = num_positions, temperature
        self.projector = None
        if self.uses_contrastive:
            projector_hidden_size = projector_hidden_size or hidden_size
            self.projector = nn.Sequential(nn.Linear(hidden_size, projector_hidden_size), nn.GELU(),
                                           nn.Linear(projector_hidden_size, hidden_size))

    @property
    def uses_contrastive(self) -> bool:
        return self.weights["step"] > 0 or self.weights["view"] > 0

    @property
    def uses_teacher(self) -> bool:
        return self.weights["mim"] > 0 or self.uses_contrastive

    def forward(self, student: nn.Module, teacher: nn.Module | None, tokens: torch.LongTensor,
                class_labels: torch.LongTensor, gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
                image_offset: int = 0) -> dict[str, torch.Tensor]:
        """Returns {"loss": weighted sum, "ar": ..., "mim": ..., "step": ..., "view": ...} (terms with weight 0 are
        left out).

        Args:
            student: the model being trained (possibly wrapped by DDP/FSDP), in train mode.
            teacher: the EMA copy in eval mode, or None when no term needs it.
            tokens: [B, V, T] code ids, V views of each of B images.
            class_labels: [B].
            gather: concatenates a tensor over processes (`accelerator.gather`), for global-batch negatives.
            image_offset: the global index of this process's first image (`process_index * B`).
        """
        batch_size, num_views, seq_len = tokens.shape
        input_ids = tokens.flatten(0, 1)  # [B*V, T], image-major
        labels = class_labels.repeat_interleave(num_views)  # [B*V]
        config = _unwrap(student).config
        start = config.cls_token_num - 1  # outputs from `start` on predict tokens 0..T-1

        rows, row_labels, bias, targets, masked_rows = input_ids, labels, None, input_ids, None
        if self.weights["mim"] > 0:
            bias = random_key_mask(input_ids.shape[0], seq_len - 1 + config.cls_token_num, self.mask_ratio,
                                   config.cls_token_num, dtype=torch.float32, device=tokens.device)
            if self.ar_pass == "split":  # even rows masked (for L_MIM), odd rows plain (for L_AR: -100 is ignored)
                masked_rows = torch.arange(len(input_ids), device=tokens.device) % 2 == 0  # [B*V]
                bias = bias.masked_fill(~masked_rows[:, None, None, None], 0.0)
                targets = input_ids.masked_fill(masked_rows[:, None], -100)
            elif self.ar_pass == "unmasked":  # both passes in one forward (one DDP forward per backward):
                rows, row_labels = input_ids.repeat(2, 1), labels.repeat(2)  # [2*B*V, T]: masked copy, plain copy
                bias = torch.cat([bias, torch.zeros_like(bias)])
                targets = torch.cat([torch.full_like(input_ids, -100), input_ids])  # L_AR on the plain copy only
        out = student(input_ids=rows[:, :-1], class_labels=row_labels, labels=targets, attention_bias=bias,
                      output_hidden_states=self.uses_teacher)
        terms = {"ar": out.loss}  # the family's next-token cross-entropy (Prologue's: of the unmasked logits)
        if self.uses_teacher:
            student_hidden = [hidden[: len(input_ids)] for hidden in out.hidden_states]  # the masked pass's rows
            terms.update(self._self_guidance_terms(student_hidden, teacher, input_ids, labels, start,
                                                   (batch_size, num_views), gather, image_offset, masked_rows))
        terms = {name: value for name, value in terms.items() if self.weights[name] > 0}
        terms["loss"] = sum(self.weights[name] * value for name, value in terms.items())
        return terms

    def _self_guidance_terms(self, student_hidden, teacher, input_ids, labels, start, shape, gather, image_offset,
                             masked_rows=None):
        batch_size, num_views = shape
        layer, seq_len = self.contrastive_layer, input_ids.shape[1]
        positions = torch.randperm(seq_len, device=input_ids.device)[: self.num_positions] + start  # [K], per batch
        with torch.inference_mode():
            hidden = teacher(input_ids=input_ids[:, :-1], class_labels=labels, output_hidden_states=True,
                             logits_to_keep=1).hidden_states  # features only: skip the head
            teacher_last = hidden[-1][:, start:]  # [B*V, T, D]
            teacher_features = hidden[layer][:, positions] if self.uses_contrastive else None  # [B*V, K, D]
        terms = {}
        if self.weights["mim"] > 0:  # inference tensors cannot be saved for backward: clone them out
            rows = slice(None) if masked_rows is None else masked_rows
            terms["mim"] = cosine_distance(student_hidden[-1][rows, start:], teacher_last[rows].clone())
        if self.uses_contrastive:
            anchors = self.projector(student_hidden[layer][:, positions]).flatten(0, 1)  # [B*V*K, D]
            keys = teacher_features.clone().flatten(0, 1)  # [B*V*K, D]
            ids = torch.stack(torch.meshgrid(torch.arange(batch_size), torch.arange(num_views),
                                             torch.arange(len(positions)), indexing="ij")).flatten(1).to(keys.device)
            ids[0] += image_offset  # [3 (image, view, position), B*V*K]
            key_ids = ids
            if gather is not None:
                keys, key_ids = gather(keys), gather(ids.T.contiguous()).T
            step_pairs, view_pairs, negatives = contrastive_masks(*ids, *key_ids)
            if self.weights["step"] > 0:
                terms["step"] = info_nce(anchors, keys, step_pairs, negatives, self.temperature)
            if self.weights["view"] > 0:
                terms["view"] = info_nce(anchors, keys, view_pairs, negatives, self.temperature)
        return terms


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def update_ema(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """teacher <- decay * teacher + (1 - decay) * student, over parameters (buffers are fixed tables)."""
    with torch.no_grad():
        teacher_params = list(teacher.parameters())
        student_params = [p.to(teacher_params[0].dtype) for p in _unwrap(student).parameters()]
        torch._foreach_lerp_(teacher_params, student_params, 1.0 - decay)
