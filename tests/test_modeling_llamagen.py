import copy
import math

import pytest
import torch
from transformers import AutoModel, DynamicCache, StaticCache

from st_ar_hf import LlamaGenForImageGeneration
from st_ar_hf.models.llamagen import modeling_llamagen
from st_ar_hf.models.llamagen.modeling_llamagen import LlamaGenLinear, apply_rotary_emb

from .conftest import tiny_gpt_config


def _inputs(config, batch=3, seed=1):
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, config.vocab_size, (batch, config.block_size), generator=generator)
    class_labels = torch.tensor([0, config.num_classes - 1, config.null_class_id][:batch])
    return tokens, class_labels


def test_class_token_rope_rows_are_zero_and_zero_q_and_k(tiny_gpt):
    rope = tiny_gpt.rotary_emb
    cls = tiny_gpt.config.cls_token_num
    assert torch.count_nonzero(rope.cos[:cls]) == 0 and torch.count_nonzero(rope.sin[:cls]) == 0
    x = torch.randn(2, cls + 3, 4, tiny_gpt.config.head_dim)
    rotated = apply_rotary_emb(x, rope(torch.arange(cls + 3)))
    assert torch.count_nonzero(rotated[:, :cls]) == 0
    assert torch.allclose(rotated[:, cls].norm(dim=-1), x[:, cls].norm(dim=-1), atol=1e-5)  # cell (0, 0): identity


def test_rope_rotates_interleaved_pairs_as_the_real_formula(tiny_gpt):
    """LlamaGen's real form: (x_2i, x_2i+1) -> (x_2i cos - x_2i+1 sin, x_2i+1 cos + x_2i sin)."""
    positions = torch.arange(tiny_gpt.max_sequence_length)
    cos, sin = tiny_gpt.rotary_emb.cos[positions][:, None], tiny_gpt.rotary_emb.sin[positions][:, None]
    x = torch.randn(2, len(positions), 4, tiny_gpt.config.head_dim)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    expected = torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], dim=-1).flatten(-2)
    torch.testing.assert_close(apply_rotary_emb(x, tiny_gpt.rotary_emb(positions)), expected, rtol=0, atol=1e-6)


def test_rope_first_half_follows_row_second_half_column(tiny_gpt):
    cos, grid, cls = tiny_gpt.rotary_emb.cos, tiny_gpt.config.grid_size, tiny_gpt.config.cls_token_num
    half = cos.shape[1] // 2
    cell_0_1, cell_1_0 = cos[cls + 1], cos[cls + grid]
    assert torch.all(cell_0_1[:half] == 1) and not torch.all(cell_0_1[half:] == 1)
    assert torch.all(cell_1_0[half:] == 1) and not torch.all(cell_1_0[:half] == 1)


def test_initial_loss_is_log_vocab_with_zero_head():
    model = LlamaGenForImageGeneration(tiny_gpt_config())
    assert torch.count_nonzero(model.lm_head.weight) == 0
    tokens, class_labels = _inputs(model.config)
    out = model(input_ids=tokens[:, :-1], class_labels=class_labels, labels=tokens)
    assert out.logits.shape == (3, model.config.cls_token_num + model.config.block_size - 1, model.config.vocab_size)
    assert out.loss.item() == pytest.approx(math.log(model.config.vocab_size), abs=1e-6)


def test_logits_index_k_predicts_token_k(tiny_gpt):
    tokens, class_labels = _inputs(tiny_gpt.config)
    out = tiny_gpt(input_ids=tokens[:, :-1], class_labels=class_labels, labels=tokens)
    manual = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), tokens.flatten())
    assert torch.allclose(out.loss, manual)
    # the class token alone predicts token 0
    prefix_only = tiny_gpt(class_labels=class_labels).logits
    assert torch.allclose(prefix_only[:, 0], out.logits[:, 0], atol=1e-5)


@pytest.mark.parametrize("cache_kind", ["dynamic", "static"])
def test_kv_cache_decode_matches_full_forward(tiny_gpt, cache_kind):
    config = tiny_gpt.config
    tokens, class_labels = _inputs(config)
    full = tiny_gpt(input_ids=tokens[:, :-1], class_labels=class_labels).logits
    cache = DynamicCache() if cache_kind == "dynamic" else StaticCache(config=config, max_cache_len=tiny_gpt.max_sequence_length)
    steps = [tiny_gpt(class_labels=class_labels, past_key_values=cache).logits]
    for k in range(config.block_size - 1):
        position = torch.tensor([config.cls_token_num + k])
        steps.append(tiny_gpt(input_ids=tokens[:, k : k + 1], past_key_values=cache, cache_position=position).logits)
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


def test_static_cache_decode_reads_filled_slots_as_the_masked_form_would(tiny_gpt, monkeypatch):
    """On the CPU a decoding step attends over the filled slots without a mask; on an accelerator or under compile it
    masks the unfilled ones. Both forms must give the same logits."""
    config = tiny_gpt.config
    tokens, class_labels = _inputs(config)

    def decode():
        cache = StaticCache(config=config, max_cache_len=tiny_gpt.max_sequence_length)
        steps = [tiny_gpt(class_labels=class_labels, past_key_values=cache).logits]
        for k in range(6):
            position = torch.tensor([config.cls_token_num + k])
            steps.append(tiny_gpt(input_ids=tokens[:, k : k + 1], past_key_values=cache, cache_position=position).logits)
        return torch.cat(steps, dim=1)

    filled_slots = decode()
    monkeypatch.setattr(modeling_llamagen, "_host_checkable", lambda tensor: False)
    assert torch.allclose(decode(), filled_slots, atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 48), (2, 1, 48), (64, 48), (65, 48), (3, 30, 48)])
def test_weight_major_linear_equals_the_plain_product(shape):
    torch.manual_seed(0)
    layer, x = LlamaGenLinear(48, 80), torch.randn(shape)
    assert layer.bias is None
    assert torch.allclose(layer(x), torch.nn.functional.linear(x, layer.weight), atol=1e-6)
    assert layer(x).shape == (*shape[:-1], 80)
    assert torch.equal(layer.bfloat16()(x.bfloat16()), torch.nn.functional.linear(x.bfloat16(), layer.weight))


def test_chunked_prefill_with_dynamic_cache_matches_full_forward(tiny_gpt):
    tokens, class_labels = _inputs(tiny_gpt.config)
    full = tiny_gpt(input_ids=tokens, class_labels=class_labels).logits
    first = tiny_gpt(input_ids=tokens[:, :5], class_labels=class_labels, use_cache=True)
    second = tiny_gpt(input_ids=tokens[:, 5:], past_key_values=first.past_key_values)
    assert torch.allclose(torch.cat([first.logits, second.logits], 1), full, atol=1e-5)


def test_eager_and_sdpa_attention_agree(tiny_gpt):
    config = copy.deepcopy(tiny_gpt.config)  # _from_config sets the implementation on the config it is given
    eager = LlamaGenForImageGeneration._from_config(config, attn_implementation="eager").eval()
    eager.load_state_dict(tiny_gpt.state_dict())
    assert tiny_gpt.config._attn_implementation == "sdpa"
    tokens, class_labels = _inputs(tiny_gpt.config)
    assert torch.allclose(eager(tokens, class_labels).logits, tiny_gpt(tokens, class_labels).logits, atol=1e-5)


def test_attention_weights_requested_under_sdpa_come_from_eager_attention(tiny_gpt):
    """SDPA computes no weights: a call that asks for them runs eager attention (by argument, or by config)."""
    config = copy.deepcopy(tiny_gpt.config)
    eager = LlamaGenForImageGeneration._from_config(config, attn_implementation="eager").eval()
    eager.load_state_dict(tiny_gpt.state_dict())
    tokens, class_labels = _inputs(tiny_gpt.config)
    out = tiny_gpt(tokens, class_labels, output_attentions=True)
    seq = tiny_gpt.config.cls_token_num + tokens.shape[1]
    assert [a.shape for a in out.attentions] == [(3, 4, seq, seq)] * tiny_gpt.config.num_hidden_layers
    assert torch.allclose(out.logits, tiny_gpt(tokens, class_labels).logits, atol=1e-5)
    eager.config.output_attentions = True
    for ours, reference in zip(out.attentions, eager(tokens, class_labels).attentions, strict=True):
        assert torch.allclose(ours, reference, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_query_hidden_from_every_key_gets_finite_logits(tiny_gpt, dtype):
    """The additive mask stays finite (finfo.min, as transformers' masks), whatever the bias: under eager attention
    (SDPA's kernel has its own safe softmax), -inf or float32's min (-inf in bfloat16) over a whole row gives it a
    uniform softmax rather than NaN."""
    model = LlamaGenForImageGeneration._from_config(copy.deepcopy(tiny_gpt.config), attn_implementation="eager")
    model.load_state_dict(tiny_gpt.state_dict())
    model = model.eval().to(dtype)
    tokens, class_labels = _inputs(model.config)
    seq = model.config.cls_token_num + tokens.shape[1]
    bias = torch.zeros(3, 1, seq, seq)
    bias[:, :, 5], bias[:, :, 9] = float("-inf"), torch.finfo(torch.float32).min
    assert torch.isfinite(model(tokens, class_labels, attention_bias=bias).logits).all()


def test_attention_bias_masks_keys_for_later_queries_only(tiny_gpt):
    tokens, class_labels = _inputs(tiny_gpt.config)
    seq = tiny_gpt.config.cls_token_num + tokens.shape[1]
    plain = tiny_gpt(tokens, class_labels).logits
    zero_bias = torch.zeros(3, 1, seq, seq)
    assert torch.allclose(tiny_gpt(tokens, class_labels, attention_bias=zero_bias).logits, plain, atol=1e-5)
    masked_key = 6
    bias = zero_bias.clone()
    bias[:, :, masked_key + 1 :, masked_key] = float("-inf")  # hide key 6 from every later query, keep its own row
    masked = tiny_gpt(tokens, class_labels, attention_bias=bias).logits
    assert torch.allclose(masked[:, : masked_key + 1], plain[:, : masked_key + 1], atol=1e-5)
    assert not torch.allclose(masked[:, masked_key + 1 :], plain[:, masked_key + 1 :], atol=1e-3)
    with pytest.raises(ValueError, match="attention_bias"):
        tiny_gpt(tokens, class_labels, attention_bias=torch.zeros(3, 1, seq, seq - 1))


def test_hidden_states_of_every_layer(tiny_gpt):
    tokens, class_labels = _inputs(tiny_gpt.config)
    out = tiny_gpt(tokens, class_labels, output_hidden_states=True)
    assert len(out.hidden_states) == tiny_gpt.config.num_hidden_layers + 1
    assert all(h.shape == (3, 1 + tokens.shape[1], tiny_gpt.config.hidden_size) for h in out.hidden_states)
    assert torch.allclose(tiny_gpt.lm_head(tiny_gpt.norm(out.hidden_states[-1])), out.logits, atol=1e-5)


def test_gradient_checkpointing_gives_same_gradients(tiny_gpt):
    tokens, class_labels = _inputs(tiny_gpt.config)
    config = tiny_gpt_config(token_dropout=0.0, residual_dropout=0.0, ffn_dropout=0.0, class_dropout_prob=0.0)
    model = LlamaGenForImageGeneration(config)
    model.load_state_dict(tiny_gpt.state_dict())
    model.train()
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            model.activation_checkpointing_enable()
        model.zero_grad()
        model(tokens[:, :-1], class_labels, labels=tokens).loss.backward()
        grads.append(model.layers[0].self_attn.qkv_proj.weight.grad.clone())
    assert grads[0].abs().sum() > 0 and torch.allclose(grads[0], grads[1], atol=1e-6)


def test_training_mode_drops_classes_and_tokens():
    model = LlamaGenForImageGeneration(tiny_gpt_config(class_dropout_prob=0.999, token_dropout=0.0,
                                                       residual_dropout=0.0, ffn_dropout=0.0))
    torch.nn.init.normal_(model.lm_head.weight, std=0.5)
    tokens, class_labels = _inputs(model.config)
    null = torch.full_like(class_labels, model.config.null_class_id)
    torch.manual_seed(0)
    train_logits = model.train()(tokens, class_labels).logits
    assert torch.allclose(train_logits, model.eval()(tokens, null).logits, atol=1e-5)
    dropping = LlamaGenForImageGeneration(tiny_gpt_config(token_dropout=0.5)).train()
    torch.nn.init.normal_(dropping.lm_head.weight, std=0.5)
    assert not torch.allclose(dropping(tokens, class_labels).logits, dropping.eval()(tokens, class_labels).logits)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(input_ids=torch.tensor([[0, 64]])), "input_ids must lie in"),
        (dict(input_ids=torch.tensor([[-1, 3]])), "input_ids must lie in"),
        (dict(input_ids=torch.tensor([[0.0, 1.0]])), "input_ids must be an int64"),
        (dict(class_labels=torch.tensor([11])), "class_labels must lie in"),
        (dict(class_labels=torch.tensor([[1]])), "class_labels must be an int64"),
        (dict(input_ids=torch.zeros(2, 3, dtype=torch.long), class_labels=torch.tensor([1])), "batch"),
        (dict(input_ids=torch.zeros(1, 17, dtype=torch.long), class_labels=torch.tensor([1])), "exceeds"),
        (dict(), "pass input_ids, class_labels"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_argument(tiny_gpt, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_gpt(**kwargs)


def test_save_pretrained_round_trip_preserves_logits(tiny_gpt, tmp_path):
    tiny_gpt.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    tokens, class_labels = _inputs(tiny_gpt.config)
    for loaded in (LlamaGenForImageGeneration.from_pretrained(tmp_path), AutoModel.from_pretrained(tmp_path)):
        assert isinstance(loaded, LlamaGenForImageGeneration)
        assert torch.equal(loaded.rotary_emb.cos, tiny_gpt.rotary_emb.cos)
        assert torch.allclose(loaded(tokens, class_labels).logits, tiny_gpt(tokens, class_labels).logits)


def test_logits_to_keep_computes_only_the_last_positions(tiny_gpt):
    tokens, labels = torch.randint(0, 64, (2, 15)), torch.tensor([1, 2])
    full = tiny_gpt(input_ids=tokens, class_labels=labels).logits
    last = tiny_gpt(input_ids=tokens, class_labels=labels, logits_to_keep=3).logits
    torch.testing.assert_close(last, full[:, -3:])
    with pytest.raises(ValueError, match="logits_to_keep must be 0"):
        tiny_gpt(input_ids=tokens, class_labels=labels, labels=torch.zeros(2, 16, dtype=torch.long), logits_to_keep=1)
