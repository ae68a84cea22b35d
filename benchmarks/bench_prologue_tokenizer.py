"""Prologue's phase-1 training step against a plain tokenizer step of the same autoencoder, in one run: what the
joint AR prior costs (random weights; the perceptual and GAN losses, the same in both, are left out).

- plain: the tokenizer's forward (encode, decode), L1 + VQ losses, backward, AdamW step;
- joint: the same plus sub-step A (the prior's CE through the prologue one-hot, its weights constant) and sub-step B
  (the prior's own CE on the detached codes, backward, AdamW step): `training/train_tokenizer.py` with a prior.
The prior's share of the joint step is printed (target: at most 30% at B-shaped sizes: Prologue-B tokenizer, the
7-layer 512-wide prior of train.sh), with the FLOP floor of each step (matmul FLOPs / measured peak).

    python benchmarks/bench_prologue_tokenizer.py [--batch 2] [--repeats 2] [--tiny]
"""

import argparse

import torch
import torch.nn.functional as F
from measure import interleaved_best, matmul_peak_flops

from st_ar_hf import PrologueVQVAE, PrologueVQVAEConfig
from st_ar_hf.training.prologue import ProloguePriorObjective, build_prior


def matmul_flops(model, tokens: int) -> float:
    """Forward matmul FLOPs of `tokens` tokens through every matrix of `model` (attention scores left out)."""
    return 2 * tokens * sum(p.numel() for name, p in model.named_parameters() if p.ndim == 2 and "embed" not in name)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="the embedded demo's shapes instead of B's")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.tiny:
        config = PrologueVQVAEConfig(image_size=24, patch_size=4, hidden_size=128, num_encoder_layers=2,
                                         num_encoder_heads=2, decoder_hidden_size=128, num_decoder_layers=2,
                                         num_decoder_heads=2, num_prologue_tokens=4, codebook_size=128,
                                         prologue_codebook_size=64, codebook_embed_dim=8)
        prior_shape = {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2}
    else:
        config, prior_shape = PrologueVQVAEConfig.from_preset("prologue-b"), {"num_hidden_layers": 7}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = PrologueVQVAE(config).train().to(device)
    prior = build_prior(config, "S", prior_shape).train().to(device)
    objective = ProloguePriorObjective()
    optimizer = torch.optim.AdamW(tokenizer.parameters(), lr=1e-4, betas=(0.0, 0.99))
    prior_optimizer = torch.optim.AdamW(prior.parameters(), lr=1e-4, betas=(0.9, 0.99), weight_decay=0.03)
    pixels = (torch.rand(args.batch, 3, config.image_size, config.image_size) * 2 - 1).to(device)

    def step(joint: bool):
        out = tokenizer(pixels)
        loss = F.l1_loss(out.reconstruction, pixels) + out.codebook_loss + out.commitment_loss
        if joint:
            loss = loss + sum(objective.encoder_terms(prior, out.prologue_indices, out.indices,
                                                      out.prologue_one_hot).values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if joint:
            objective.prior_terms(prior, out.prologue_indices, out.indices)["prior"].backward()
            prior_optimizer.step()
            prior_optimizer.zero_grad(set_to_none=True)

    best = interleaved_best([("plain", lambda: step(False)), ("joint", lambda: step(True))], args.repeats, set())
    peak = matmul_peak_flops(torch.float32, device)
    num_patches = config.grid_size**2
    tokens = args.batch * (num_patches + config.num_prologue_tokens)
    plain_flops = 3 * (matmul_flops(tokenizer.encoder, tokens) + matmul_flops(tokenizer.decoder, args.batch * num_patches))
    # the prior: sub-step A forward + backward to the inputs (2x), sub-step B forward + backward (3x)
    prior_flops = 5 * matmul_flops(prior, args.batch * prior.config.sequence_length)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {name}, fp32 matmul peak {peak / 1e12:.2f} TFLOP/s; "
          f"{'tiny' if args.tiny else 'Prologue-B'} tokenizer ({tokenizer.num_parameters():,} parameters), prior "
          f"{prior.num_parameters():,} parameters, batch {args.batch}")
    for name, flops in (("plain", plain_flops), ("joint", plain_flops + prior_flops)):
        print(f"  {name:5s} step {best[name]:7.3f} s   floor {flops / peak:7.3f} s ({100 * flops / peak / best[name]:4.1f}%)")
    share = (best["joint"] - best["plain"]) / best["joint"]
    print(f"  the prior's share of the joint step: {100 * share:.1f}% (FLOP share {100 * prior_flops / (plain_flops + prior_flops):.1f}%; "
          f"target <= 30%: {'met' if share <= 0.30 else 'NOT met'}); joint / plain {best['joint'] / best['plain']:.2f}x")


if __name__ == "__main__":
    main()
