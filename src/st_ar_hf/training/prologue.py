"""Prologue's joint tokenizer phase (arXiv 2605.06137; the official `train_tokenizer.py`, methods.md §B.3): a small
AR prior models the tokenizer's `[prologue] [EOS] [visual]` sequences, and its cross-entropy is the prologue tokens'
only training signal: it reaches the shared encoder through the prologue quantiser's straight-through one-hot.

Per batch, two sub-steps share the tokens:
- A (the tokenizer): `encoder_terms`: the prior's weights held constant but differentiable in its inputs, whose
  prologue embeddings are `one_hot @ prologue rows`; weighted CE of the prologue and EOS targets and of the visual ones,
  each summed over its tokens and divided by the whole length;
- B (the prior): `prior_terms`: the plain CE of the detached tokens.
In both, `visual_dropout` of the samples see EOS in place of their visual inputs (the targets stay), which pushes
information into the prologue. The phase-1 prior is unconditional (the null class as BOS).
"""

import copy

import torch
from torch import nn
from torch.func import functional_call

from ..models.prologue import PrologueConfig, PrologueForImageGeneration
from .losses import _unwrap


def prior_sequence(prologue_indices: torch.LongTensor | None, visual_indices: torch.LongTensor,
                   visual_vocab_size: int, prologue_vocab_size: int) -> torch.LongTensor:
    """Tokenizer codes -> an AR's tokens [B, P + 1 + N]: prologue codes offset past the visual ones, EOS (the id after
    both codebooks), visual codes; just the visual codes [B, N] without a prologue (a 2D tokenizer)."""
    if prologue_indices is None:
        return visual_indices.flatten(1)
    eos = torch.full_like(prologue_indices[:, :1], visual_vocab_size + prologue_vocab_size)
    return torch.cat([prologue_indices + visual_vocab_size, eos, visual_indices.flatten(1)], dim=1)


def drop_visual_inputs(sequence: torch.LongTensor, config: PrologueConfig, probability: float) -> torch.LongTensor:
    """A copy of `sequence` in which a `probability` share of the samples has EOS in place of its visual tokens."""
    if probability == 0:
        return sequence
    dropped = torch.rand(sequence.shape[0], device=sequence.device) < probability
    inputs = sequence.clone()
    inputs[dropped, config.num_prologue_tokens + 1 :] = config.eos_token_id
    return inputs


class ProloguePriorObjective(nn.Module):
    """The prior's two roles in phase 1 (module docstring); `prologue_weight` weighs the prologue and EOS terms and
    `visual_weight` the visual one (the official 3.0 and 3.0)."""

    def __init__(self, prologue_weight: float = 3.0, visual_weight: float = 3.0, visual_dropout: float = 0.5):
        super().__init__()
        self.prologue_weight, self.visual_weight, self.visual_dropout = prologue_weight, visual_weight, visual_dropout

    def _forward(self, prior, sequence, prologue_one_hot=None, constant_weights=False):
        """Per-token CE [B, L] of the unmasked logits; the inputs visually dropped."""
        config = prior.config
        inputs = drop_visual_inputs(sequence, config, self.visual_dropout)
        null = torch.full((sequence.shape[0],), config.null_class_id, device=sequence.device)
        kwargs = dict(input_ids=inputs[:, :-1], class_labels=null, prologue_one_hot=prologue_one_hot, labels=sequence,
                      loss_reduction="none")
        if not constant_weights:
            return prior(**kwargs).loss
        weights = {name: tensor.detach() for name, tensor in [*prior.named_parameters(), *prior.named_buffers()]}
        return functional_call(prior, weights, kwargs=kwargs).loss

    def encoder_terms(self, prior: PrologueForImageGeneration, prologue_indices, visual_indices, prologue_one_hot
                      ) -> dict[str, torch.Tensor]:
        """Sub-step A: {"prior_prologue": weighted (prologue + EOS) CE, "prior_visual": weighted visual CE}, each
        summed over its tokens and divided by the sequence length; gradients reach `prologue_one_hot` only."""
        config = prior.config
        sequence = prior_sequence(prologue_indices, visual_indices, config.visual_vocab_size, config.prologue_vocab_size)
        per_token = self._forward(prior, sequence, prologue_one_hot, constant_weights=True)  # [B, L]
        split = prior.config.num_prologue_tokens + 1
        return {"prior_prologue": self.prologue_weight * per_token[:, :split].sum(1).mean() / sequence.shape[1],
                "prior_visual": self.visual_weight * per_token[:, split:].sum(1).mean() / sequence.shape[1]}

    def prior_terms(self, prior, prologue_indices, visual_indices) -> dict[str, torch.Tensor]:
        """Sub-step B: {"prior": mean CE} on the detached codes, training the prior (DDP-wrapped or not)."""
        config = _unwrap(prior).config
        sequence = prior_sequence(prologue_indices.detach(), visual_indices.detach(), config.visual_vocab_size,
                                  config.prologue_vocab_size)
        return {"prior": self._forward(prior, sequence).mean()}


def build_prior(tokenizer_config, size: str = "S", overrides: dict | None = None) -> PrologueForImageGeneration:
    """The phase-1 prior for a Prologue tokenizer: preset `size` (train.sh: "S" cut to 7 layers, through
    `overrides`), the tokenizer's vocabulary layout, one class (the prior is unconditional: only the null row is
    used) and no dropout."""
    config = PrologueConfig.from_preset(size, **{
        "visual_vocab_size": tokenizer_config.codebook_size, "prologue_vocab_size": tokenizer_config.prologue_codebook_size,
        "num_prologue_tokens": tokenizer_config.num_prologue_tokens, "num_visual_tokens": tokenizer_config.grid_size**2,
        "num_classes": 1, "class_dropout_prob": 0.0, "embedding_dropout": 0.0, "residual_dropout": 0.0,
        **(overrides or {})})
    return PrologueForImageGeneration(config)


def make_prior(args, accelerator, tokenizer_config):
    """`train_tokenizer.py`'s prior: built by `build_prior` from `--prior_model` / `--prior_config`, its EMA copy when
    `--prior_ema_decay` is set (else None), and its AdamW (betas (adam_beta1, prior_adam_beta2), weight decay on the
    matrices only), prepared: (prior, optimizer, ema)."""
    prior = build_prior(tokenizer_config, args.prior_model, args.prior_config).train()
    ema = None
    if args.prior_ema_decay is not None:
        ema = copy.deepcopy(prior).to(accelerator.device).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(
        [{"params": [p for p in prior.parameters() if p.ndim >= 2], "weight_decay": args.prior_weight_decay},
         {"params": [p for p in prior.parameters() if p.ndim < 2], "weight_decay": 0.0}],
        lr=args.prior_learning_rate, betas=(args.adam_beta1, args.prior_adam_beta2))
    prior, optimizer = accelerator.prepare(prior, optimizer)
    return prior, optimizer, ema


class PrologueCodeCounts:
    """Counts of each prologue position's codes over a log window: `add(prologue_indices [B, P])`, then `logs`: the
    mean share of the codebook each position uses and the mean entropy (nats) of its codes, summed over processes
    (a collective); a collapsing prologue shows there first."""

    def __init__(self, num_positions: int, codebook_size: int):
        self.counts = torch.zeros(num_positions, codebook_size)

    def add(self, prologue_indices: torch.LongTensor) -> None:
        indices = prologue_indices.detach().cpu()
        positions = torch.arange(indices.shape[1]).expand_as(indices)
        self.counts.index_put_((positions.flatten(), indices.flatten()), torch.ones(indices.numel()), accumulate=True)

    def logs(self, accelerator) -> dict[str, float]:
        counts = accelerator.reduce(self.counts.to(accelerator.device), "sum").cpu()
        self.counts.zero_()
        probabilities = counts / counts.sum(1, keepdim=True).clamp(min=1)
        return {"prologue/position_usage": (counts > 0).float().mean().item(),
                "prologue/position_entropy": torch.special.entr(probabilities).sum(1).mean().item()}


__all__ = ["PrologueCodeCounts", "ProloguePriorObjective", "build_prior", "drop_visual_inputs", "make_prior",
           "prior_sequence"]
