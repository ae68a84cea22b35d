"""Convert Prologue's released checkpoint folders (Zyriix/prologue on the Hub: `accelerator.save_state` folders of
safetensors) into `PrologueVQVAE` / `PrologueForImageGeneration` directories.

Folder layouts of the official trainers: a tokenizer folder holds `model.safetensors` (encoder and quantisers),
`model_1` (decoder), `model_2` / `model_3` (their EMA); an AR folder `model.safetensors` (the AR) and `model_1` (its
EMA). As the official evaluation does, the tokenizer's EMA weights and the AR's raw ones are taken by default.

The original conditions every norm and residual gate on a class vector, which its released models always fill with
the null class; the converter evaluates that constant conditioning once (the same operations in fp32) and stores
the resulting norm weights and gates. Every key is used or is a known buffer; everything else is read off the shapes.
"""

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from ..conversion import count_indexed, load_strict, require, save_converted
from .configuration_prologue import PROLOGUE_PRESETS, PROLOGUE_SAMPLING, PrologueConfig, PrologueVQVAEConfig
from .modeling_prologue import PrologueForImageGeneration
from .modeling_prologue_tokenizer import PrologueVQVAE

# buffers of the originals that carry no weights: the quantisers' all-zero position masks, the AR's null-class one-hot
_BUFFERS = ("quantizer.pos_select_mask", "semantic_quantizer.pos_select_mask", "uncond_ar_labels", "logit_mask",
            "codebook_size_per_pos")


def load_folder(folder, files: tuple[str, ...], kind: str) -> dict[str, torch.Tensor]:
    """The first file of `files` present in the checkpoint folder -> its state dict (safetensors: no code runs)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"checkpoint {str(folder)!r} is not a folder (a {kind} `accelerator.save_state` folder of "
                         f"safetensors files)")
    for name in files:
        if (folder / name).is_file():
            try:
                return load_file(folder / name)
            except Exception as error:  # truncated or not a safetensors file
                raise ValueError(f"checkpoint {str(folder / name)!r} is not a readable safetensors file: {error}") from None
    raise ValueError(f"checkpoint {str(folder)!r} has none of {list(files)}: not a {kind} folder")


class _Keys:
    """A state dict whose keys must all be taken exactly once (`take`); `finish` names what is left over."""

    def __init__(self, state_dict: dict, kind: str):
        self.state_dict, self.kind, self.used = state_dict, kind, set()

    def take(self, key: str) -> torch.Tensor:
        self.used.add(key)
        return require(self.state_dict, key, self.kind).float()

    def has(self, key: str) -> bool:
        return key in self.state_dict

    def finish(self):
        left = sorted(k for k in self.state_dict if k not in self.used and not k.endswith(_BUFFERS))
        if left:
            raise ValueError(f"checkpoint keys not part of a {self.kind} checkpoint: {left[:8]}"
                             + (f" and {len(left) - 8} more" if len(left) > 8 else ""))
        for key, value in self.state_dict.items():
            if key.endswith("pos_select_mask") and value.any():
                raise ValueError(f"checkpoint {key!r} restricts codes per position; only the released all-zero masks "
                                 f"are supported")


def _affine(keys: _Keys, prefix: str, condition: torch.Tensor) -> torch.Tensor:
    """The original's conditioned Linear evaluated on the constant condition: [dim]."""
    out = condition @ keys.take(f"{prefix}.weight").t()
    return out.add_(keys.take(f"{prefix}.bias")) if keys.has(f"{prefix}.bias") else out


def _null_condition(keys: _Keys, prefix: str) -> torch.Tensor:
    """`cond_proj` (Linear, RMS norm, tanh-GELU) of the null class (the last one-hot column) -> [1, cond_dim]."""
    weight = keys.take(f"{prefix}.cond_proj.0.weight")
    null = F.one_hot(torch.tensor([weight.shape[1] - 1]), weight.shape[1]).float()
    hidden = (null @ weight.t()).add_(keys.take(f"{prefix}.cond_proj.0.bias"))
    hidden = F.normalize(hidden, dim=-1) * hidden.shape[-1] ** 0.5 * (1.0 + keys.take(f"{prefix}.cond_proj.1.weight"))
    return F.gelu(hidden, approximate="tanh")


def _convert_stack(keys: _Keys, source: str, target: str, condition: torch.Tensor) -> dict[str, torch.Tensor]:
    """The layers of one original `Transformer` (`source`, e.g. "enc") -> our `PrologueBlock` keys under `target`."""
    out = {}
    for i in range(count_indexed(keys.state_dict, rf"{source}\.layers\.(\d+)\.")):
        src, dst = f"{source}.layers.{i}", f"{target}.layers.{i}"
        up, gate = keys.take(f"{src}.ffn.fc1.weight").chunk(2)  # the original's (gate, value): value is activated
        out |= {
            f"{dst}.attn_norm.weight": 1.0 + _affine(keys, f"{src}.adaln_1.affine", condition)[0],
            f"{dst}.attn.qkv_proj.weight": torch.cat([keys.take(f"{src}.attn1.to_q.weight"),
                                                      keys.take(f"{src}.attn1.to_kv.weight")]),  # (q, k, v) rows
            f"{dst}.attn.q_norm.weight": 1.0 + keys.take(f"{src}.attn1.q_norm.weight"),
            f"{dst}.attn.k_norm.weight": 1.0 + keys.take(f"{src}.attn1.k_norm.weight"),
            f"{dst}.attn.o_proj.weight": keys.take(f"{src}.attn1.proj.weight"),
            f"{dst}.attn_gate": _affine(keys, f"{src}.gate1", condition)[0],
            f"{dst}.mlp_norm.weight": 1.0 + _affine(keys, f"{src}.adaln_mlp.affine", condition)[0],
            f"{dst}.mlp.gate_proj.weight": gate,
            f"{dst}.mlp.up_proj.weight": up,
            f"{dst}.mlp.down_proj.weight": keys.take(f"{src}.ffn.fc2.weight"),
            f"{dst}.mlp_gate": _affine(keys, f"{src}.gate_mlp", condition)[0],
        }
        if keys.has(f"{src}.attn1.proj.bias"):
            up_bias, gate_bias = keys.take(f"{src}.ffn.fc1.bias").chunk(2)
            out |= {
                f"{dst}.attn.o_proj.bias": keys.take(f"{src}.attn1.proj.bias"),
                f"{dst}.mlp.gate_proj.bias": gate_bias,
                f"{dst}.mlp.up_proj.bias": up_bias,
                f"{dst}.mlp.down_proj.bias": keys.take(f"{src}.ffn.fc2.bias"),
            }
    return out


def _heads(keys: _Keys, source: str, width: int) -> int:
    """The head count from the per-head QK-norm width (the original's RoPE spans the whole head)."""
    return width // require(keys.state_dict, f"{source}.layers.0.attn1.q_norm.weight", keys.kind).shape[0]


def convert_prologue_tokenizer(checkpoint, ema: bool = True, output_dir=None, **overrides) -> PrologueVQVAE:
    """A Prologue / 2D tokenizer folder (or a pair of state dicts (encoder, decoder)) -> `PrologueVQVAE`.

    Args:
        ema: the EMA weights (`model_2` / `model_3`, what the official evaluation decodes with) or the raw ones.
        overrides: config fields the weights cannot tell (`prologue_temperature`, RoPE axes and bases).
    """
    if isinstance(checkpoint, tuple):
        encoder_state, decoder_state = checkpoint
    else:
        encoder_state = load_folder(checkpoint, ("model_2.safetensors",) if ema else ("model.safetensors",),
                                    "Prologue tokenizer")
        decoder_state = load_folder(checkpoint, ("model_3.safetensors",) if ema else ("model_1.safetensors",),
                                    "Prologue tokenizer")
    kind = "Prologue tokenizer"
    enc, dec = _Keys(encoder_state, kind), _Keys(decoder_state, kind)
    width, patch_dim = require(encoder_state, "enc.input_layer.weight", kind).shape
    codebook = require(encoder_state, "quantizer.embedding.weight", kind)
    num_patches = require(encoder_state, "quantizer.pos_select_mask", kind).shape[0]
    post = enc.has("semantic_enc.input_layer.weight")  # Prologue-Post: a separate prologue encoder
    query_encoder = "semantic_enc" if post else "enc"  # the original module that holds the prologue queries
    queries = encoder_state.get(f"{query_encoder}.learnable_query")
    if queries is not None and not enc.has("semantic_quantizer.embedding.weight"):
        raise ValueError("checkpoint is a 1D tokenizer (all codes from learnable queries), which is not supported "
                         "yet; the Prologue, Prologue-Post and 2D tokenizers are")
    post_shape = {}
    if post:
        post_width = require(encoder_state, "semantic_enc.input_layer.weight", kind).shape[0]
        post_shape = dict(
            prologue_encoder_layers=count_indexed(encoder_state, r"semantic_enc\.layers\.(\d+)\."),
            prologue_encoder_hidden_size=post_width, prologue_encoder_heads=_heads(enc, "semantic_enc", post_width),
            prologue_encoder_mlp_ratio=require(encoder_state, "semantic_enc.layers.0.ffn.fc1.weight", kind).shape[0]
            / 2 / post_width,
        )
    decoder_width = require(decoder_state, "dec.input_layer.weight", kind).shape[0]
    in_channels = overrides.pop("in_channels", 3)
    patch_size = math.isqrt(patch_dim // in_channels)
    config = PrologueVQVAEConfig(**{
        **dict(
            image_size=math.isqrt(num_patches) * patch_size, patch_size=patch_size, in_channels=in_channels,
            hidden_size=width, num_encoder_layers=count_indexed(encoder_state, r"enc\.layers\.(\d+)\."),
            num_encoder_heads=_heads(enc, "enc", width), decoder_hidden_size=decoder_width,
            num_decoder_layers=count_indexed(decoder_state, r"dec\.layers\.(\d+)\."),
            num_decoder_heads=_heads(dec, "dec", decoder_width),
            mlp_ratio=require(encoder_state, "enc.layers.0.ffn.fc1.weight", kind).shape[0] / 2 / width,
            num_prologue_tokens=0 if queries is None else queries.shape[1],
            codebook_size=codebook.shape[0], codebook_embed_dim=codebook.shape[1],
            prologue_codebook_size=encoder_state.get("semantic_quantizer.embedding.weight", codebook).shape[0],
            **post_shape,
        ),
        **overrides,
    })
    state = _convert_stack(enc, "enc", "encoder", _null_condition(enc, "enc"))
    state |= {"encoder.input_proj.weight": enc.take("enc.input_layer.weight"),
              "encoder.input_proj.bias": enc.take("enc.input_layer.bias")}
    if post:
        state |= _convert_stack(enc, "semantic_enc", "prologue_encoder", _null_condition(enc, "semantic_enc"))
        state |= {"prologue_encoder.input_proj.weight": enc.take("semantic_enc.input_layer.weight"),
                  "prologue_encoder.input_proj.bias": enc.take("semantic_enc.input_layer.bias")}
    if queries is not None:
        state[f"{'prologue_encoder' if post else 'encoder'}.prologue_queries"] = enc.take(f"{query_encoder}.learnable_query")[0]
    for source, target in (("quantizer", "quantizer"), ("semantic_quantizer", "prologue_quantizer")):
        if source == "quantizer" or queries is not None:
            state |= {f"{target}.{name}": enc.take(f"{source}.{name}")
                      for name in ("proj_in.weight", "proj_in.bias", "embedding.weight")}
    condition = _null_condition(dec, "dec")
    state |= _convert_stack(dec, "dec", "decoder", condition)
    state |= {
        "decoder.code_embed.weight": dec.take("dec.input_layer.weight"),
        "decoder.code_embed.bias": dec.take("dec.input_layer.bias"),
        "decoder.norm.weight": 1.0 + _affine(dec, "dec.out_norm.affine", condition)[0],
        "decoder.to_patches.weight": dec.take("dec.out.weight"),
        "decoder.to_patches.bias": dec.take("dec.out.bias"),
    }
    enc.finish()
    dec.finish()
    model = PrologueVQVAE(config)
    load_strict(model, state)
    if output_dir is not None:
        save_converted(model, output_dir, checkpoint if not isinstance(checkpoint, tuple) else None, "prologue-tokenizer")
    return model.eval()


def paper_sampling(tokenizer: PrologueVQVAEConfig, hidden_size: int) -> dict:
    """The paper's guidance and no-guidance temperatures for this tokenizer and AR width (methods.md §B.4): split CFG
    for Prologue models, the 2D baseline's cosine ramp (`oc:10:1.5`, temperature 0.85) without prologue tokens;
    an empty dict (config defaults) for pairs the paper does not report."""
    if tokenizer.num_prologue_tokens == 0:
        return {"default_guidance_scale": (10.0, 1.5), "no_guidance_temperature": (0.85, 0.85)}
    series = {16384: "prologue-b", 4096: "prologue-l"}.get(tokenizer.codebook_size)
    size = next((name for name, (_, _, width) in PROLOGUE_PRESETS.items() if width == hidden_size), None)
    if (series, size) not in PROLOGUE_SAMPLING:
        return {}
    guidance, temperatures = PROLOGUE_SAMPLING[series, size]
    return {"default_guidance_scale": guidance, "no_guidance_temperature": temperatures}


def convert_prologue(checkpoint, tokenizer: PrologueVQVAE | PrologueVQVAEConfig, ema: bool = False,
                     output_dir=None, **overrides) -> PrologueForImageGeneration:
    """A Prologue AR folder (or its state dict) -> `PrologueForImageGeneration` for `tokenizer`, whose codebooks
    set the vocabulary layout.

    Args:
        ema: the EMA weights (`model_1.safetensors`) instead of the raw ones the official evaluation samples with.
        overrides: config fields the weights cannot tell (`rotary_dim`, `rope_theta`, dropouts, sampling defaults).
    """
    tokenizer = getattr(tokenizer, "config", tokenizer)
    if not isinstance(tokenizer, PrologueVQVAEConfig):
        raise ValueError(f"tokenizer must be a PrologueVQVAE or its config, got {type(tokenizer).__name__}")
    kind = "Prologue AR"
    state_dict = checkpoint if isinstance(checkpoint, dict) else load_folder(
        checkpoint, ("model_1.safetensors",) if ema else ("model.safetensors",), kind)
    keys = _Keys(state_dict, kind)
    vocab_size, width = require(state_dict, "semantic_emb.weight", kind).shape
    num_prologue = tokenizer.num_prologue_tokens
    expected = tokenizer.codebook_size + (tokenizer.prologue_codebook_size + 1 if num_prologue else 0)
    if vocab_size != expected:
        raise ValueError(f"tokenizer: its codebooks ({tokenizer.codebook_size} visual"
                         + (f" + {tokenizer.prologue_codebook_size} prologue + EOS" if num_prologue else "")
                         + f" = {expected} tokens) do not match the AR vocabulary of {vocab_size}")
    config = PrologueConfig(**{
        **dict(
            visual_vocab_size=tokenizer.codebook_size, prologue_vocab_size=tokenizer.prologue_codebook_size,
            num_prologue_tokens=num_prologue, num_visual_tokens=tokenizer.grid_size**2, hidden_size=width,
            num_hidden_layers=count_indexed(state_dict, r"ar_model\.layers\.(\d+)\."),
            num_attention_heads=_heads(keys, "ar_model", width),
            intermediate_size=require(state_dict, "ar_model.layers.0.ffn.fc1.weight", kind).shape[0] // 2,
            num_classes=require(state_dict, "bos_emb.weight", kind).shape[0] - 1,
        ),
        **paper_sampling(tokenizer, width),
        **overrides,
    })
    condition = _null_condition(keys, "ar_model")
    state = _convert_stack(keys, "ar_model", "", condition)
    state = {key.removeprefix("."): value for key, value in state.items()}
    state |= {
        "embed_classes.weight": keys.take("bos_emb.weight"),
        "embed_tokens.weight": keys.take("semantic_emb.weight"),
        "norm.weight": 1.0 + _affine(keys, "ar_model.out_norm.affine", condition)[0],
        "lm_head.weight": keys.take("ar_model.out.weight"),
    }
    keys.finish()
    model = PrologueForImageGeneration(config)
    load_strict(model, state)
    if output_dir is not None:
        save_converted(model, output_dir, checkpoint if not isinstance(checkpoint, dict) else None, "prologue-ar")
    return model.eval()


__all__ = ["convert_prologue", "convert_prologue_tokenizer", "load_folder", "paper_sampling"]
