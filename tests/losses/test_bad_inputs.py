"""Bad arguments to the losses give a ``ValueError`` naming the argument, never a NaN or
1e12 loss or a ``TypeError`` from deep inside (issue 15)."""

from __future__ import annotations

import re

import pytest
import torch

from fastalign.losses import (
    aggregate,
    bradley_terry_loss,
    chosen_nll,
    cpo_loss,
    dpo_loss,
    kto_loss,
    orpo_loss,
    simpo_loss,
    sft_loss,
)

NAN, INF = float("nan"), float("inf")
PC = torch.tensor([-3.0, -4.0, -5.0])
PR = torch.tensor([-4.0, -3.5, -6.0])
RC = torch.tensor([-3.2, -4.1, -5.5])
RR = torch.tensor([-3.9, -3.0, -6.1])
LC = torch.tensor([3.0, 4.0, 5.0])
LR = torch.tensor([4.0, 3.0, 6.0])


def _with(values: torch.Tensor, index: int, value: float) -> torch.Tensor:
    out = values.clone()
    out[index] = value
    return out


def _dpo(**kwargs):
    return dpo_loss(PC, PR, RC, RR, **kwargs)


TWO = dict(loss_type=["sigmoid", "hinge"])
CASES = {
    # NaN / inf token counts
    "dpo ipo: NaN chosen_lengths": (
        lambda: _dpo(loss_type="ipo", chosen_lengths=_with(LC, 1, NAN), rejected_lengths=LR),
        r"chosen_lengths must hold finite token counts >= 0; chosen_lengths[1] is nan"),
    "dpo ipo: inf rejected_lengths": (
        lambda: _dpo(loss_type="ipo", chosen_lengths=LC, rejected_lengths=_with(LR, 2, INF)),
        r"rejected_lengths must hold finite token counts >= 0; rejected_lengths[2] is inf"),
    "dpo rpo: negative chosen_lengths": (
        lambda: _dpo(rpo_alpha=1.0, chosen_lengths=_with(LC, 0, -1.0)),
        r"chosen_lengths must hold finite token counts >= 0; chosen_lengths[0] is -1.0"),
    "simpo: NaN chosen_lengths": (
        lambda: simpo_loss(PC, PR, _with(LC, 0, NAN), LR), r"chosen_lengths[0] is nan"),
    "orpo: NaN rejected_lengths": (
        lambda: orpo_loss(PC, PR, LC, _with(LR, 1, NAN)), r"rejected_lengths[1] is nan"),
    "cpo: bool chosen_lengths": (
        lambda: cpo_loss(PC, PR, LC > 0), r"chosen_lengths must hold token counts (an integer or float tensor)"),
    # loss_weights
    "dpo: NaN in loss_weights": (
        lambda: _dpo(**TWO, loss_weights=[1.0, NAN]), r"loss_weights[1] must be a finite number, got nan"),
    "dpo: strings as loss_weights": (
        lambda: _dpo(**TWO, loss_weights=["a", "b"]), r"loss_weights[0] must be a finite number, got 'a'"),
    "dpo: a string as loss_weights": (
        lambda: _dpo(**TWO, loss_weights="ab"), r"loss_weights must be a list of 2 numbers, got str"),
    "dpo: a number as loss_weights": (
        lambda: _dpo(loss_weights=0.5), r"loss_weights must be a list of 1 numbers, got float"),
    "dpo: a negative loss weight": (
        lambda: _dpo(**TWO, loss_weights=[1.0, -0.5]), r"loss_weights[1] must be >= 0, got -0.5"),
    "dpo: too few loss_weights": (
        lambda: _dpo(**TWO, loss_weights=[1.0]), r"loss_weights has 1 entries for 2 loss types"),
    "dpo: loss_type not a string": (
        lambda: _dpo(loss_type=3), r"loss_type must be a string or a list of them, got int"),
    # f_alpha_divergence_coef
    "dpo: NaN f_alpha_divergence_coef": (
        lambda: _dpo(f_divergence_type="alpha_divergence", f_alpha_divergence_coef=NAN),
        r"f_alpha_divergence_coef must be a finite number, got nan"),
    "dpo: string f_alpha_divergence_coef": (
        lambda: _dpo(f_divergence_type="alpha_divergence", f_alpha_divergence_coef="0.5"),
        r"f_alpha_divergence_coef must be a finite number, got '0.5'"),
    # global counts (num_pairs & co.): 0, negative, NaN, inf, as numbers and tensors
    "dpo: num_pairs=tensor(0.)": (
        lambda: _dpo(num_pairs=torch.tensor(0.0)), r"num_pairs must be finite and > 0, got 0.0"),
    "dpo: negative num_pairs tensor": (
        lambda: _dpo(num_pairs=torch.tensor([-3.0])), r"num_pairs must be finite and > 0, got -3.0"),
    "dpo: NaN num_pairs tensor": (
        lambda: _dpo(num_pairs=torch.tensor(NAN)), r"num_pairs must be finite and > 0, got nan"),
    "dpo: inf num_pairs": (lambda: _dpo(num_pairs=INF), r"num_pairs must be finite and > 0, got inf"),
    "dpo: bool num_pairs tensor": (
        lambda: _dpo(num_pairs=torch.tensor(True)), r"num_pairs must be a real count, got dtype torch.bool"),
    "simpo: num_pairs=tensor(0)": (
        lambda: simpo_loss(PC, PR, LC, LR, num_pairs=torch.tensor(0)), r"num_pairs must be finite and > 0, got 0"),
    "cpo: negative num_pairs tensor": (
        lambda: cpo_loss(PC, PR, LC, num_pairs=torch.tensor(-1.0)), r"num_pairs must be finite and > 0, got -1.0"),
    "orpo: num_pairs=tensor(0.)": (
        lambda: orpo_loss(PC, PR, LC, LR, num_pairs=torch.tensor(0.0)), r"num_pairs must be finite and > 0"),
    "kto: num_examples=tensor(0.)": (
        lambda: kto_loss(PC, RC, torch.tensor([True, False, True]), num_examples=torch.tensor(0.0)),
        r"num_examples must be finite and > 0, got 0.0"),
    "bradley_terry: num_pairs=tensor(-2.)": (
        lambda: bradley_terry_loss(PC, PR, num_pairs=torch.tensor(-2.0)), r"num_pairs must be finite and > 0"),
    "sft_loss: num_tokens=tensor(0.)": (
        lambda: sft_loss(PC[None], torch.ones(1, 3), num_tokens=torch.tensor(0.0)),
        r"num_tokens must be finite and > 0, got 0.0"),
    "chosen_nll: num_tokens=NaN": (
        lambda: chosen_nll(PC, LC, num_tokens=NAN), r"num_tokens must be finite and > 0, got nan"),
    "aggregate: num_tokens=tensor(0.)": (
        lambda: aggregate(PC[None], torch.ones(1, 3), num_tokens=torch.tensor(0.0)),
        r"num_tokens must be finite and > 0, got 0.0"),
    "aggregate: num_sequences=tensor(NaN)": (
        lambda: aggregate(PC[None], torch.ones(1, 3), "seq_mean_token_sum", num_sequences=torch.tensor(NAN)),
        r"num_sequences must be finite and > 0, got nan"),
    "aggregate: max_tokens=NaN": (
        lambda: aggregate(PC[None], torch.ones(1, 3), "seq_mean_token_sum_norm", max_tokens=NAN),
        r"max_tokens must be an int >= 1, got nan"),
    # numerics: no log-probability is positive; forward_kl past the dtype's exp range
    "orpo: positive chosen log-prob": (
        lambda: orpo_loss(_with(PC, 1, 0.5), PR, LC, LR),
        r"policy_chosen_logps[1] is 0.5 > 0: log-probabilities are <= 0"),
    "orpo: positive rejected log-prob": (
        lambda: orpo_loss(PC, _with(PR, 2, 3.0), LC, LR),
        r"policy_rejected_logps[2] is 3 > 0: log-probabilities are <= 0"),
    "dpo forward_kl: chosen log-ratio -1000": (
        lambda: dpo_loss(_with(PC, 0, -1003.0), PR, RC, RR, f_divergence_type="forward_kl"),
        r"f_divergence_type='forward_kl': the chosen log-ratio (policy - reference log-prob) of pair 0 is -999.8"),
    "dpo forward_kl: rejected log-ratio -1000 (float64)": (
        lambda: dpo_loss(PC.double(), _with(PR, 1, -1003.0).double(), RC.double(), RR.double(),
                         f_divergence_type="forward_kl"),
        r"the rejected log-ratio (policy - reference log-prob) of pair 1 is -1000, and exp(-log-ratio) overflows "
        r"torch.float64"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_a_value_error_naming_the_argument(case):
    call, message = CASES[case]
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


def test_valid_tensor_counts_still_divide():
    # The checks refuse only what is wrong: a positive count works as a tensor of any shape-1 form.
    plain = _dpo().loss
    assert torch.allclose(_dpo(num_pairs=torch.tensor([3])).loss, plain)
    assert _dpo(num_pairs=torch.tensor(3.0)).loss.shape == ()
    assert torch.allclose(_dpo(**TWO, loss_weights=(1, 0.0)).loss, plain)
