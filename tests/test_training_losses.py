"""ST-AR loss terms against small cases computed by hand, and the objective's wiring on a tiny random GPT."""

import copy
import math

import pytest
import torch

from st_ar_hf import LlamaGenForImageGeneration
from st_ar_hf.training.losses import (
    STARObjective, contrastive_masks, cosine_distance, info_nce, random_key_mask, update_ema,
)

from .conftest import tiny_gpt_config


def test_random_key_mask_hides_the_requested_keys_but_never_the_prefix_or_the_diagonal():
    torch.manual_seed(0)
    bias = random_key_mask(batch_size=3, seq_len=9, mask_ratio=0.25, num_prefix=1, dtype=torch.float32)
    assert bias.shape == (3, 1, 9, 9)
    hidden = bias[:, 0] < 0  # [B, query, key]
    assert not hidden[:, :, 0].any()  # the class token stays visible
    assert not hidden.diagonal(dim1=1, dim2=2).any()  # every query sees itself
    hidden_keys = hidden.any(dim=1)  # [B, key]: hidden from at least one query
    assert hidden_keys.sum(dim=1).tolist() == [2, 2, 2]  # round(0.25 * 8)
    for b in range(3):  # a hidden key is hidden from every other query
        for key in hidden_keys[b].nonzero().flatten().tolist():
            assert hidden[b, :, key].sum() == 8


def test_masked_attention_never_produces_nan_even_at_extreme_ratios():
    torch.manual_seed(0)
    model = LlamaGenForImageGeneration._from_config(tiny_gpt_config(), attn_implementation="eager")
    torch.nn.init.normal_(model.lm_head.weight, std=0.5)
    tokens = torch.randint(0, 64, (4, 15))
    for ratio in (0.25, 0.9, 0.99):
        bias = random_key_mask(4, 16, ratio, num_prefix=1, dtype=torch.float32)
        out = model(input_ids=tokens, class_labels=torch.arange(4), attention_bias=bias, output_hidden_states=True)
        assert torch.isfinite(out.logits).all() and all(torch.isfinite(h).all() for h in out.hidden_states)
        out.logits.logsumexp(-1).mean().backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        model.zero_grad()


def test_cosine_distance_by_hand():
    student = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    teacher = torch.tensor([[0.0, 3.0], [2.0, 0.0], [-1.0, -1.0]])
    assert cosine_distance(student, teacher).item() == pytest.approx((1 + 0 + 2) / 3)


def test_info_nce_by_hand():
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    keys = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]])
    positives = torch.tensor([[True, False, False], [False, True, True]])
    negatives = torch.tensor([[False, True, True], [True, False, False]])
    # anchor 0: positive key 0 (cos 1), negatives keys 1 (cos 0) and 2 (cos -1)
    # anchor 1: positives keys 1 (cos 1) and 2 (cos 0), negative key 0 (cos 0); temperature 0.5 doubles the logits
    t = 0.5
    loss_0 = -math.log(math.exp(1 / t) / (math.exp(1 / t) + math.exp(0) + math.exp(-1 / t)))
    loss_1a = -math.log(math.exp(1 / t) / (math.exp(1 / t) + math.exp(0)))
    loss_1b = -math.log(math.exp(0) / (math.exp(0) + math.exp(0)))
    expected = (loss_0 + loss_1a + loss_1b) / 3
    assert info_nce(anchors, keys, positives, negatives, t).item() == pytest.approx(expected, rel=1e-6)


def test_contrastive_masks_pair_steps_views_and_other_images():
    # 2 images x 2 views x 2 positions, image-major like the objective's flattening
    ids = torch.stack(torch.meshgrid(torch.arange(2), torch.arange(2), torch.arange(2), indexing="ij")).flatten(1)
    step, view, negatives = contrastive_masks(*ids, *ids)
    index = {tuple(ids[:, n].tolist()): n for n in range(8)}
    anchor = index[(0, 0, 0)]
    assert step[anchor].nonzero().flatten().tolist() == [index[(0, 0, 1)]]  # same view, other position
    assert view[anchor].nonzero().flatten().tolist() == [index[(0, 1, 0)]]  # same position, other view
    assert negatives[anchor].nonzero().flatten().tolist() == [index[(1, v, k)] for v in range(2) for k in range(2)]


def _student_and_teacher():
    torch.manual_seed(0)
    student = LlamaGenForImageGeneration._from_config(tiny_gpt_config(), attn_implementation="eager").eval()
    torch.nn.init.normal_(student.lm_head.weight, std=0.5)
    return student, copy.deepcopy(student).requires_grad_(False)


def test_objective_terms_and_weighted_sum():
    student, teacher = _student_and_teacher()
    tokens, labels = torch.randint(0, 64, (3, 2, 16)), torch.tensor([1, 2, 3])
    objective = STARObjective(64, ar_weight=1.0, mim_weight=1.0, step_weight=0.5, view_weight=0.25,
                              contrastive_layer=1, num_positions=4)
    torch.manual_seed(1)
    terms = objective(student, teacher, tokens, labels)
    assert set(terms) == {"ar", "mim", "step", "view", "loss"}
    expected = terms["ar"] + terms["mim"] + 0.5 * terms["step"] + 0.25 * terms["view"]
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert terms["mim"].item() > 0  # the mask changes the student's features
    terms["loss"].backward()
    assert objective.projector[0].weight.grad is not None and student.embed_tokens.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())


def test_objective_ar_term_is_the_models_next_token_loss_and_zero_weights_drop_terms():
    student, teacher = _student_and_teacher()
    tokens, labels = torch.randint(0, 64, (2, 1, 16)), torch.tensor([4, 5])
    baseline = STARObjective(64, mim_weight=0.0, step_weight=0.0, view_weight=0.0)
    terms = baseline(student, None, tokens, labels)
    assert set(terms) == {"ar", "loss"} and baseline.projector is None and not baseline.uses_teacher
    reference = student(input_ids=tokens[:, 0, :-1], class_labels=labels, labels=tokens[:, 0]).loss
    torch.testing.assert_close(terms["ar"], reference)


def test_ar_pass_reads_the_masked_the_plain_or_the_split_student_pass():
    student, teacher = _student_and_teacher()
    tokens, labels = torch.randint(0, 64, (3, 2, 16)), torch.tensor([1, 2, 3])
    input_ids, row_labels = tokens.flatten(0, 1), labels.repeat_interleave(2)
    plain = student(input_ids=input_ids[:, :-1], class_labels=row_labels, labels=input_ids, output_hidden_states=True)
    terms = {}
    for ar_pass in ("masked", "unmasked", "split"):
        objective = STARObjective(64, mim_weight=1.0, step_weight=0.0, view_weight=0.0, ar_pass=ar_pass)
        torch.manual_seed(2)
        terms[ar_pass] = objective(student, teacher, tokens, labels)
    torch.testing.assert_close(terms["unmasked"]["ar"], plain.loss)  # the second, plain forward
    assert abs(terms["masked"]["ar"].item() - plain.loss.item()) > 1e-4  # a quarter of the keys hidden
    torch.testing.assert_close(terms["unmasked"]["mim"], terms["masked"]["mim"])  # same mask, same masked pass
    # split: the odd rows (each image's second view) unmasked and alone in L_AR; L_MIM on the even, masked rows
    odd = slice(1, None, 2)
    torch.testing.assert_close(terms["split"]["ar"], student(input_ids=input_ids[odd, :-1], class_labels=row_labels[odd],
                                                             labels=input_ids[odd]).loss)
    torch.manual_seed(2)
    bias = random_key_mask(6, 16, 0.25, 1, torch.float32)[::2]
    masked = student(input_ids=input_ids[::2, :-1], class_labels=row_labels[::2], attention_bias=bias, output_hidden_states=True)
    teacher_last = teacher(input_ids=input_ids[::2, :-1], class_labels=row_labels[::2], output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(terms["split"]["mim"], cosine_distance(masked.hidden_states[-1], teacher_last))
    with pytest.raises(ValueError, match="--ar_pass must be one of"):
        STARObjective(64, ar_pass="both")


def test_mim_is_zero_when_nothing_is_masked_and_the_teacher_is_the_student():
    student, teacher = _student_and_teacher()
    objective = STARObjective(64, mim_weight=1.0, step_weight=0.0, view_weight=0.0, mask_ratio=0.01)  # round(0.15) = 0
    terms = objective(student, teacher, torch.randint(0, 64, (2, 1, 16)), torch.tensor([0, 1]))
    assert terms["mim"].item() == pytest.approx(0.0, abs=1e-6)


def test_update_ema_by_hand():
    teacher, student = torch.nn.Linear(2, 1, bias=False), torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.constant_(teacher.weight, 1.0)
    torch.nn.init.constant_(student.weight, 3.0)
    update_ema(teacher, student, decay=0.75)
    torch.testing.assert_close(teacher.weight, torch.full((1, 2), 0.75 * 1 + 0.25 * 3))
