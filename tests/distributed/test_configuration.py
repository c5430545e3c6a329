"""Bad distributed configurations fail with clear messages before any work is done, per-step
counts that do not divide by the world size are rounded up (one log line), and the row split is
token-balanced and deterministic."""

from __future__ import annotations

import pytest

from fastalign.train import distributed
from fastalign.train.distributed import assign_rows, check_strategy

TORCHRUN = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29555"}


def test_without_torchrun():
    assert check_strategy("auto", environ={}) == ("none", {"rank": 0, "world_size": 1, "local_rank": 0})
    with pytest.raises(ValueError, match=r"strategy='ddp' needs torchrun.*\['RANK', 'WORLD_SIZE'"):
        check_strategy("ddp", environ={})
    with pytest.raises(ValueError, match="strategy must be one of"):
        check_strategy("deepspeed", environ={})


def test_under_torchrun():
    assert check_strategy("auto", environ=TORCHRUN)[0] == "ddp"
    assert check_strategy("fsdp2", environ=TORCHRUN) == ("fsdp2", {"rank": 0, "world_size": 2, "local_rank": 0})
    with pytest.raises(ValueError, match=r"incomplete torchrun environment: \['MASTER_PORT'\]"):
        check_strategy("ddp", environ={k: v for k, v in TORCHRUN.items() if k != "MASTER_PORT"})
    with pytest.raises(ValueError, match="independent copies"):
        check_strategy("none", environ=TORCHRUN)
    with pytest.raises(ValueError, match="outside WORLD_SIZE"):
        check_strategy("ddp", environ={**TORCHRUN, "RANK": "2"})


def test_fsdp2_not_available(monkeypatch):
    monkeypatch.setattr(distributed, "_fsdp2", lambda: None)
    with pytest.raises(ValueError, match="fsdp2.*fully_shard"):
        check_strategy("fsdp2", environ=TORCHRUN)


def _trainer(tmp_path, **overrides):
    from fastalign.app.recipes import load_model
    from fastalign.data import make_preference_task
    from fastalign.train import DPOConfig, DPOTrainer

    model, tokenizer = load_model("tiny")
    data = make_preference_task(num_train=8, num_test=2)["train"]
    options = dict(output_dir=str(tmp_path / "run"), max_steps=1, device="cpu", progress=False)
    return DPOTrainer(model, tokenizer, data, DPOConfig(**{**options, **overrides}))


def test_trainer_refuses_before_any_work(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="needs torchrun"):
        _trainer(tmp_path, strategy="fsdp2")
    for name, value in TORCHRUN.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match="lora_r > 0 with strategy='fsdp2'"):
        _trainer(tmp_path, strategy="fsdp2", rows_per_step=2, lora_r=4)
    with pytest.raises(ValueError, match="strategy must be one of"):
        _trainer(tmp_path, strategy="horovod")
    with pytest.raises(ValueError, match="offload_reference=True needs strategy='fsdp2'"):
        _trainer(tmp_path, strategy="ddp", rows_per_step=2, offload_reference=True)
    with pytest.raises(ValueError, match="offload_reference=True needs CUDA"):
        _trainer(tmp_path, strategy="fsdp2", rows_per_step=2, offload_reference=True)
    assert not (tmp_path / "run").exists()
    import torch.distributed as dist

    assert not dist.is_initialized()  # no process group was started


def test_rl_trainers_refuse_fsdp2_and_uneven_prompts(tmp_path, monkeypatch):
    from fastalign.app.recipes import load_model
    from fastalign.data import make_preference_task
    from fastalign.train.grpo import GRPOConfig, GRPOTrainer

    for name, value in TORCHRUN.items():
        monkeypatch.setenv(name, value)
    model, tokenizer = load_model("tiny")
    prompts = make_preference_task(num_train=4, num_test=1)["train"]
    def reward(prompts, completions):
        return [0.0] * len(prompts)

    with pytest.raises(ValueError, match="strategy='fsdp2' are not supported: use strategy='ddp'"):
        GRPOTrainer(model, tokenizer, prompts, GRPOConfig(output_dir=str(tmp_path), strategy="fsdp2", device="cpu"),
                    reward_fn=reward)



@pytest.mark.parametrize("value, world, expected", [(1, 2, 2), (3, 2, 4), (1, 3, 3), (4, 3, 6), (6, 3, 6), (5, 1, 5)])
def test_per_step_counts_are_rounded_up_to_the_world_size(value, world, expected, capsys):
    from fastalign.train import DPOConfig
    from fastalign.train.grpo import GRPOConfig

    config = DPOConfig(rows_per_step=value)
    fitted = distributed.round_to_world(config, "rows_per_step", world, "packed rows", main=True)
    assert fitted.rows_per_step == expected and config.rows_per_step == value, "the caller's config is left alone"
    err = capsys.readouterr().err
    if expected == value:
        assert fitted is config and err == ""
    else:
        assert err.count("\n") == 1 and f"rows_per_step={value} rounded up to {expected}" in err
    rl = distributed.round_to_world(GRPOConfig(prompts_per_step=value), "prompts_per_step", world, "prompts", main=False)
    assert rl.prompts_per_step == expected and capsys.readouterr().err == "", "only rank 0 speaks"


def test_assign_rows_balances_tokens_with_equal_row_counts():
    assert assign_rows([10, 9, 1, 1], 2) == [[0, 3], [1, 2]]  # 10+1 vs 9+1
    parts = assign_rows([50, 40, 30, 20, 10, 5], 3)
    assert sorted(i for part in parts for i in part) == list(range(6))
    assert all(len(part) == 2 for part in parts)
    loads = [sum([50, 40, 30, 20, 10, 5][i] for i in part) for part in parts]
    assert max(loads) - min(loads) <= 20
    assert assign_rows([50, 40, 30, 20, 10, 5], 3) == parts  # deterministic
    with pytest.raises(ValueError, match="cannot be split evenly"):
        assign_rows([1, 2, 3], 2)
