"""Data-parallel training under torchrun (2 processes, gloo on CPU) against one process that
accumulates the gradients of the same per-rank micro-batches, so BatchNorm sees the same
batches in both; and torchrun with one process, whose collectives are identities, against a
plain run."""

import json
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import training.train as loop
from training import data as datasets
from training import distributed, load_checkpoint
from training.models import build_model
from training.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
WORLD = 2
TINY = TrainConfig(arch="resnet8", width=4, dataset="digits", subset=256, epochs=1,
                   batch_size=64, lr=0.1, progress=False)   # 4 steps per epoch


def cli_args(config: TrainConfig) -> list[str]:
    args = ["--method", config.method, "--arch", config.arch, "--width", str(config.width),
            "--dataset", config.dataset, "--subset", str(config.subset),
            "--epochs", str(config.epochs), "--batch-size", str(config.batch_size),
            "--lr", str(config.lr), "--seed", str(config.seed), "--out", config.out,
            "--no-progress"]
    return args + (["--resume"] if config.resume else [])


def torchrun(config: TrainConfig, script: str | None = None,
             nproc: int = WORLD) -> subprocess.CompletedProcess:
    """Run ``config`` with ``torchrun --nproc_per_node=nproc`` (or a script in its place)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    target = [str(ROOT / "tests" / script)] if script else ["-m", "training.train"]
    return run_python(["-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                       "--master_addr=127.0.0.1", f"--master_port={port}", *target,
                       *cli_args(config)])


def run_python(args: list[str]) -> subprocess.CompletedProcess:
    """``python args`` from the repository root, with one thread as each torchrun worker."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=180)


def accumulated_reference(config: TrainConfig) -> dict[str, torch.Tensor]:
    """One process: for each global batch, the step on every rank's micro-batch in turn,
    gradients summed then divided by the world size, one optimiser step. Parameters.

    One thread, as each torchrun worker has: a tiny AugLocal net amplifies the rounding
    differences between 1- and 2-thread convolutions to 1e-4 within four steps."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _accumulated_reference(config)
    finally:
        torch.set_num_threads(threads)


def _accumulated_reference(config: TrainConfig) -> dict[str, torch.Tensor]:
    info = datasets.dataset_info(config.dataset)
    torch.manual_seed(config.seed)
    model = build_model(config.arch, width=config.width, in_channels=info.channels,
                        num_classes=info.num_classes)
    method = loop.method_config(config, len(model.layer_names))
    step = method.build_step(model, num_classes=info.num_classes,
                             input_size=(info.channels, info.image_size, info.image_size),
                             normalisation=(info.mean, info.std))
    optimizer = loop.make_optimizer(config, step.trainable.parameters())
    train_set, _ = loop.load_data(config)
    steps = len(train_set) // config.batch_size
    step.trainable.train()
    for epoch in range(config.epochs):
        shares = [datasets.train_batches(train_set, config.batch_size, seed=config.seed,
                                         epoch=epoch, rank=r, world_size=WORLD)
                  for r in range(WORLD)]
        for i, micro_batches in enumerate(zip(*shares)):
            for group in optimizer.param_groups:
                group["lr"] = loop.learning_rate(epoch + i / steps, lr=config.lr,
                                                 epochs=config.epochs,
                                                 warmup_epochs=config.warmup)
            optimizer.zero_grad(set_to_none=True)
            for x, y in micro_batches:
                assert len(y) == config.batch_size // WORLD
                step(x, y)
            for p in step.trainable.parameters():
                if p.grad is not None:
                    p.grad /= WORLD
            optimizer.step()
    return {**{f"model.{k}": v for k, v in step.model.named_parameters()},
            **{f"aux.{k}": v for k, v in getattr(step, "aux", torch.nn.Module()
                                                 ).named_parameters()}}


def assert_same_parameters(ckpt: dict, reference: dict[str, torch.Tensor]) -> None:
    saved = {**{f"model.{k}": v for k, v in ckpt["state_dict"].items()},
             **{f"aux.{k}": v for k, v in (ckpt["aux_state_dict"] or {}).items()}}
    assert reference and reference.keys() <= saved.keys()
    for key, value in reference.items():
        torch.testing.assert_close(saved[key], value.detach(), rtol=1e-5, atol=1e-5,
                                   msg=lambda m, key=key: f"{key}: {m}")


@pytest.mark.parametrize("config", [
    replace(TINY, method="bp"),
    replace(TINY, method="auglocal", arch="resnet14"),   # aux nets on layers 0…3
    replace(TINY, method="dgl", arch="resnet14"),        # aux nets on layers 0…5
    replace(TINY, method="infopro"),                     # aux nets on layers 0…2
    replace(TINY, method="predsim"),
], ids=["bp", "auglocal", "dgl", "infopro", "predsim"])
def test_two_processes_match_one_that_accumulates_the_micro_batches(tmp_path, config):
    config = replace(config, out=str(tmp_path / f"{config.method}.pt"))
    run = torchrun(config)
    assert run.returncode == 0, run.stderr[-3000:]
    ckpt = torch.load(config.out, weights_only=True)
    assert_same_parameters(ckpt, accumulated_reference(config))

    # rank 0 alone prints, logs and writes checkpoints
    assert run.stdout.count("epoch 1/1:") == 1
    records = [json.loads(line) for line in Path(config.out).with_suffix(".jsonl").open()]
    assert [r["event"] for r in records] == ["cost", "epoch"]
    assert records[1]["world_size"] == WORLD
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{config.method}.jsonl",
                                                          f"{config.method}.pt"]

    # the checkpoint loads in a single process, with its weights
    model, meta = load_checkpoint(config.out)
    assert meta["method"]["name"] == config.method
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, ckpt["state_dict"][key])


def test_resume_under_torchrun_continues_the_same_run(tmp_path):
    config = replace(TINY, epochs=2, out=str(tmp_path / "bp.pt"))
    crashed = torchrun(config, script="ddp_crash_worker.py")
    assert crashed.returncode != 0
    assert torch.load(config.out, weights_only=True)["epoch"] == 1

    resumed = torchrun(replace(config, resume=True))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ckpt = torch.load(config.out, weights_only=True)
    assert ckpt["epoch"] == 2 and [r["epoch"] for r in ckpt["metrics"]["epochs"]] == [1, 2]
    assert_same_parameters(ckpt, accumulated_reference(config))


def test_torchrun_with_one_process_matches_a_plain_run(tmp_path):
    """One gloo process joins the process group and runs every collective; all are identities,
    so the checkpoint holds the plain run's weights, bit for bit."""
    config = replace(TINY, method="auglocal", arch="resnet14", epochs=2)
    plain = replace(config, out=str(tmp_path / "plain.pt"))
    launched = replace(config, out=str(tmp_path / "launched.pt"))
    run = run_python(["-m", "training.train", *cli_args(plain)])
    assert run.returncode == 0, run.stderr[-3000:]
    run = torchrun(launched, nproc=1)
    assert run.returncode == 0, run.stderr[-3000:]

    a = torch.load(plain.out, weights_only=True)
    b = torch.load(launched.out, weights_only=True)
    for part in ("state_dict", "aux_state_dict"):
        assert a[part] and a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs"
    for ran, world_sizes in ((plain, [None, None]), (launched, [1, 1])):  # who was launched
        records = [json.loads(line) for line in Path(ran.out).with_suffix(".jsonl").open()]
        assert [r.get("world_size") for r in records if r["event"] == "epoch"] == world_sizes


def test_a_global_batch_that_the_processes_cannot_share_is_refused(tmp_path, monkeypatch):
    for key, value in (("WORLD_SIZE", "3"), ("RANK", "0"), ("MASTER_ADDR", "127.0.0.1"),
                       ("MASTER_PORT", "29500")):
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match="--batch-size 64 is the global batch and must be "
                                         "divisible by the 3 processes; choose e.g. 63"):
        loop.train(replace(TINY, out=str(tmp_path / "x.pt")))


def test_world_from_env():
    rendezvous = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    assert distributed.world_from_env({}) == distributed.SINGLE
    assert not distributed.SINGLE.launched and distributed.SINGLE.is_main
    world = distributed.world_from_env({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "1",
                                        **rendezvous})
    assert (world.rank, world.world_size, world.local_rank, world.launched,
            world.is_main) == (2, 4, 1, True, False)
    assert distributed.world_from_env({"WORLD_SIZE": "1", **rendezvous}) \
        == distributed.World(launched=True)
    with pytest.raises(ValueError, match="RANK=4 lies outside"):
        distributed.world_from_env({"WORLD_SIZE": "4", "RANK": "4", **rendezvous})
    with pytest.raises(ValueError, match="torchrun environment not understood"):
        distributed.world_from_env({"WORLD_SIZE": "two", **rendezvous})
    with pytest.raises(ValueError, match="WORLD_SIZE=1 is set but MASTER_ADDR and MASTER_PORT "
                                         "not: start the run with torchrun, or unset"):
        distributed.world_from_env({"WORLD_SIZE": "1"})
