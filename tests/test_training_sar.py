"""The scale-wise objectives on tiny random models: FlexVAR's schedule sampler, teacher-forcing inputs, Stagger-Scale
Rollout and the contrastive student-forcing loss, each against a small case worked by hand."""

import random

import pytest
import torch
import torch.nn.functional as F

from st_ar_hf.training.loop import var_lin0_factor
from st_ar_hf.training.sar import (
    RolloutSampling, ScaleWiseObjective, check_flexvar_schedule, flexvar_schedule, rollout_tokens, scale_inputs,
)

from .conftest import TINY_SCALES

VAR_SCHEDULE = [1, 2, 3, 4, 5, 6, 8, 10, 13, 16]


class ScriptedRandom:
    """Stands in for the `random` module with scripted draws."""

    def __init__(self, randoms, samples, choices):
        self.randoms, self.samples, self.choices = list(randoms), list(samples), list(choices)

    def random(self):
        return self.randoms.pop(0)

    def sample(self, population, k):
        drawn = self.samples.pop(0)
        assert len(drawn) == k and set(drawn) <= set(population), (drawn, population)
        return drawn

    def choice(self, population):
        index = self.choices.pop(0)
        assert index in population
        return index


def test_flexvar_schedule_worked_by_hand():
    # 5% branch: the trained schedule itself
    assert flexvar_schedule(VAR_SCHEDULE, ScriptedRandom([0.01], [], [])) == VAR_SCHEDULE
    # 5 of 3..10 and 2 of 11..15, sorted between [1, 2] and 16; no drop (0.5 <= 0.9); 952 tokens is too long, so
    # scales among the last four are dropped (index 7, the 14: 756; then index 8, the 16: 500) until <= 680
    rng = ScriptedRandom([0.5, 0.5], [[10, 3, 4, 8, 9], [14, 15]], [7, 8])
    assert flexvar_schedule(VAR_SCHEDULE, rng) == [1, 2, 3, 4, 8, 9, 10, 15]
    # a draw above 0.95 drops two middle scales (indices 2 and 3 of what is left)
    rng = ScriptedRandom([0.5, 0.96], [[3, 4, 5, 6, 8], [11, 13]], [2, 3])
    assert flexvar_schedule(VAR_SCHEDULE, rng) == [1, 2, 4, 6, 8, 11, 13, 16]


def test_flexvar_schedule_draws_valid_schedules_at_flexvar_rates():
    rng = random.Random(0)
    schedules = [flexvar_schedule(VAR_SCHEDULE, rng) for _ in range(4000)]
    for schedule in schedules:
        assert schedule[0] == 1 and len(schedule) >= 2 and all(b > a for a, b in zip(schedule, schedule[1:]))
        assert sum(s * s for s in schedule) <= 680
    assert 0.035 < sum(s == VAR_SCHEDULE for s in schedules) / len(schedules) < 0.065  # 5% plus chance hits
    assert any(s[-1] != 16 for s in schedules)  # FlexVAR's truncation can drop the last scale
    short = [flexvar_schedule([1, 2, 3, 4, 6], rng) for _ in range(2000)]  # heavy truncation never drops the 1
    assert all(s[0] == 1 and len(s) >= 2 and sum(x * x for x in s) <= 66 for s in short)


def test_flexvar_schedule_needs_room_for_its_draws():
    check_flexvar_schedule([1, 2, 3, 4, 6, 8])
    with pytest.raises(ValueError, match="random_scales"):
        check_flexvar_schedule([1, 2, 4])


def test_var_lin0_schedule():
    assert var_lin0_factor(0, 10, 110, 0.005, 0.01) == 0.005
    assert var_lin0_factor(5, 10, 110, 0.005, 0.01) == pytest.approx(0.005 + 0.995 * 0.5)
    assert var_lin0_factor(12, 10, 110, 0.005, 0.01) == 1.0  # the peak for the first 5% after warm-up
    assert var_lin0_factor(109, 10, 110, 0.005, 0.01) == pytest.approx(0.01)  # the end ratio at the last step
    assert var_lin0_factor(500, 10, 110, 0.005, 0.01) == pytest.approx(0.01)
    # SAR-d16: epochs 179..190 of a 190-epoch schedule sit at 0.15 .. 0.1 of the peak (wpe 0.1, warm-up ep / 50)
    assert var_lin0_factor(179, 3.8, 190, 0.005, 0.1) == pytest.approx(0.1 + 0.9 * (1 - 175.2 / 185.2) / 0.95)


def _maps(batch, scales, vocab, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(vocab, (batch, s, s), generator=generator) for s in scales]


def test_flexvar_inputs_are_the_bicubic_upsampled_normalised_codes(tiny_flexvae):
    maps = _maps(2, TINY_SCALES, 64)
    codebook = F.normalize(tiny_flexvae.quantize.embedding.weight, dim=-1)
    expected = [F.interpolate(codebook[maps[k]].permute(0, 3, 1, 2), size=(TINY_SCALES[k + 1],) * 2, mode="bicubic")
                for k in range(len(TINY_SCALES) - 1)]
    expected = torch.cat([e.flatten(2).transpose(1, 2) for e in expected], dim=1)
    assert torch.equal(scale_inputs(tiny_flexvae, "flexvar", maps), expected)
    # the rollout replaces map k by its rolled-out tokens as the input of scale k + 1
    rolled = _maps(2, TINY_SCALES[:-1], 64, seed=1)
    staggered = scale_inputs(tiny_flexvae, "flexvar", maps, rolled_out=rolled)
    assert torch.equal(staggered, scale_inputs(tiny_flexvae, "flexvar", [*rolled, maps[-1]]))


def test_var_rollout_inputs_keep_the_ground_truth_context(tiny_var_vqvae):
    maps = _maps(2, TINY_SCALES, 64)
    teacher = scale_inputs(tiny_var_vqvae, "var", maps)
    assert torch.equal(teacher, tiny_var_vqvae.scale_inputs(maps))
    assert torch.equal(scale_inputs(tiny_var_vqvae, "var", maps, rolled_out=maps[:-1]), teacher)
    # rolling out scale 0 only changes scale 1's input; scale 2's input still sums the ground truth of scales 0, 1
    rolled = [(maps[0] + 1) % 64, maps[1]]
    staggered = scale_inputs(tiny_var_vqvae, "var", maps, rolled_out=rolled)
    assert not torch.equal(staggered[:, :4], teacher[:, :4]) and torch.equal(staggered[:, 4:], teacher[:, 4:])


class Recorder(torch.nn.Module):
    """Wraps a model and records the arguments of every forward."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, []

    def forward(self, class_labels, scale_inputs, **kwargs):
        output = self.model(class_labels, scale_inputs, **kwargs)
        self.calls.append((class_labels, scale_inputs, kwargs, output.logits))
        return output


@pytest.fixture
def flexvar_setup(tiny_flexvar, tiny_flexvae):
    return Recorder(tiny_flexvar.train()), tiny_flexvae, _maps(3, TINY_SCALES, 64), torch.tensor([1, 4, 7])


def test_sigma_zero_is_teacher_forcing(flexvar_setup):
    model, vqvae, maps, labels = flexvar_setup
    terms = ScaleWiseObjective(model.model.config, sigma=0.0)(model, vqvae, maps, labels)
    targets = torch.cat([m.flatten(1) for m in maps], dim=1)
    logits = model.model(labels, scale_inputs(vqvae, "flexvar", maps), scales=TINY_SCALES).logits
    assert torch.allclose(terms["loss"], F.cross_entropy(logits.flatten(0, 1), targets.flatten()), atol=1e-6)
    assert len(model.calls) == 1 and set(terms) == {"tf", "tf_last", "tf_rest", "loss"}
    sar = ScaleWiseObjective(model.model.config, sigma=0.5)(model, vqvae, maps, labels)
    assert torch.allclose(sar["tf"], terms["tf"], atol=1e-6)  # L_TF is unchanged by the SAR term


def test_last_mode_runs_class_then_last_scale_on_the_upsampled_argmax(flexvar_setup):
    model, vqvae, maps, labels = flexvar_setup
    terms = ScaleWiseObjective(model.model.config, sigma=0.01)(model, vqvae, maps, labels)
    (_, _, _, teacher_logits), (sf_labels, sf_inputs, sf_kwargs, sf_logits) = model.calls
    assert torch.equal(sf_labels, labels)
    assert sf_kwargs == {"scales": [1, 4], "with_start_embedding": False}
    argmax = teacher_logits.argmax(-1)  # [B, 1 + 4 + 16]
    penultimate = argmax[:, 1:5].view(3, 2, 2)
    codebook = F.normalize(vqvae.quantize.embedding.weight, dim=-1)
    expected = F.interpolate(codebook[penultimate].permute(0, 3, 1, 2), size=(4, 4), mode="bicubic")
    assert torch.equal(sf_inputs, expected.flatten(2).transpose(1, 2))
    # L_CSF: the student-forced logits of the last scale against the teacher-forced argmax of the last scale
    assert sf_logits.shape == (3, 17, 64)
    expected_csf = F.cross_entropy(sf_logits[:, 1:].flatten(0, 1), argmax[:, 5:].flatten())
    assert torch.allclose(terms["csf"], expected_csf, atol=1e-6)
    assert torch.allclose(terms["loss"], terms["tf"] + 0.01 * terms["csf"])
    rolled_correct = (argmax[:, :5] == torch.cat([m.flatten(1) for m in maps[:2]], 1)).float().mean()
    assert terms["rollout_agreement"] == rolled_correct


def test_start_embedding_is_left_out_of_the_student_forced_pass(tiny_flexvar):
    labels, inputs = torch.tensor([3]), torch.randn(1, 16, 8)
    without = tiny_flexvar(labels, inputs, scales=[1, 4], with_start_embedding=False).logits
    with torch.no_grad():
        tiny_flexvar.start_embedding.zero_()
    assert torch.equal(without, tiny_flexvar(labels, inputs, scales=[1, 4]).logits)


def test_all_mode_and_ground_truth_targets(flexvar_setup):
    model, vqvae, maps, labels = flexvar_setup
    objective = ScaleWiseObjective(model.model.config, sigma=1.0, rollout_scales="all", rollout_targets="ground_truth")
    terms = objective(model, vqvae, maps, labels)
    (_, _, _, teacher_logits), (_, sf_inputs, sf_kwargs, sf_logits) = model.calls
    argmax = teacher_logits.argmax(-1)
    rolled = [argmax[:, :1].view(3, 1, 1), argmax[:, 1:5].view(3, 2, 2)]
    assert sf_kwargs == {"scales": TINY_SCALES}
    assert torch.equal(sf_inputs, scale_inputs(vqvae, "flexvar", maps, rolled_out=rolled))
    targets = torch.cat([m.flatten(1) for m in maps], dim=1)
    assert torch.allclose(terms["csf"], F.cross_entropy(sf_logits[:, 1:].flatten(0, 1), targets[:, 1:].flatten()), atol=1e-6)


def test_gradients_flow_through_both_passes_and_not_into_the_targets(flexvar_setup):
    model, vqvae, maps, labels = flexvar_setup
    objective = ScaleWiseObjective(model.model.config, sigma=1.0)
    terms = objective(model, vqvae, maps, labels)
    terms["loss"].backward()
    full = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.calls.clear()
    tf_only = ScaleWiseObjective(model.model.config, sigma=0.0)(model, vqvae, maps, labels)
    tf_only["loss"].backward()
    assert any(not torch.allclose(full[n], p.grad) for n, p in model.named_parameters())  # L_CSF adds gradient
    assert vqvae.quantize.embedding.weight.grad is None  # inputs and targets are data, even for a trainable tokenizer


def test_sampled_rollout_uses_the_guidance_ramp_and_filters():
    cond = torch.tensor([[[0.0, 1.0, 0.9], [5.0, 0.0, 0.0]]])  # [B = 1, 2 positions (scales of side 1), 3 codes]
    uncond = torch.tensor([[[0.0, 2.0, 0.0], [0.0, 0.0, 0.0]]])
    tokens = rollout_tokens(torch.cat([cond, uncond]), [1, 1], RolloutSampling(guidance_scale=1.0, top_k=1, top_p=1.0))
    # scale 0: t = 0.5, 1.5 cond - 0.5 uncond = [0, 0.5, 1.35]; scale 1: t = 1, 2 cond - uncond = [10, 0, 0]
    assert tokens.tolist() == [[2, 0]]
    assert rollout_tokens(cond, [1, 1], None).tolist() == [[1, 0]]  # argmax of the conditional logits


def test_bad_objective_settings_are_refused(tiny_var):
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        ScaleWiseObjective(tiny_var.config, sigma=-1.0)
    with pytest.raises(ValueError, match="rollout_scales must be one of"):
        ScaleWiseObjective(tiny_var.config, sigma=1.0, rollout_scales="some")
    with pytest.raises(ValueError, match="VAR's per-position embeddings"):
        ScaleWiseObjective(tiny_var.config, sigma=1.0, rollout_scales="last")
