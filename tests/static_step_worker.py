"""Run by tests/test_step.py, with python or under torchrun: the graphed step's logic with capture
off (static input buffers, one flat gradient buffer, warm-up undone, its dropout masks included,
the rank-ordered gradient mean between phases) against the eager DDP step, on the same batches,
with dropout. Writes what it found as JSON.

    worker.py DATA_DIR OUT.json OPTIMIZER DEVICE LSTM_DROPOUT

LSTM_DROPOUT is nn.LSTM's dropout between its layers: on CUDA it is cuDNN's, from a dropout state
of its own (see GraphedStep._reseed_cudnn_dropout), so the GPU test compares the steps without it.
"""

import json
import sys
from pathlib import Path

import torch

from dist_rnn.amp import grad_scaler
from dist_rnn.cli import exit_without_finalizing
from dist_rnn.config import TrainConfig
from dist_rnn.data import GlobalBatchSampler, MemoryFeeder, SequenceView, load_mnist
from dist_rnn.distributed import broadcast_weights, process_group, wrap
from dist_rnn.model import build_model
from dist_rnn.step import EagerStep, GraphedStep
from dist_rnn.train import build_optimizer

STEPS = 25


def train(c: TrainConfig, env, train_set, graphed: bool) -> dict:
    torch.manual_seed(c.seed)
    model = build_model(c, input_size=28).to(env.device)
    optimizer = build_optimizer(c, model, graphed=graphed and env.device.type == "cuda")
    common = dict(params=list(model.parameters()), optimizer=optimizer, scaler=grad_scaler("fp32", env.device),
                  view=SequenceView("row"), precision="fp32", loss="ce", grad_clip=c.grad_clip)
    sampler = GlobalBatchSampler(len(train_set), c.batch_size, env.rank, env.world_size, c.seed)
    if graphed:
        step = GraphedStep(broadcast_weights(model, env), env=env, local_batch=sampler.local_batch,
                           image_shape=(28, 28), capture=env.device.type == "cuda", **common)
    else:
        step = EagerStep(wrap(model, env), device=env.device, **common)
    initial = [p.detach().cpu().clone() for p in model.parameters()]
    losses = []
    for k, (images, labels) in enumerate(MemoryFeeder(train_set, env.device).batches(sampler, into=step.inputs()), 1):
        step(images, labels)  # STEPS batches: the training set holds exactly that many
        if k % 5 == 0:
            losses.append(float(step.take_mean_loss()))  # this rank's mean over the last 5 steps
    params = [p.detach().cpu().clone() for p in model.parameters()]
    moved = max(float((a - b).abs().max()) for a, b in zip(params, initial))
    return {"params": params, "losses": losses, "moved": moved}


def main(data_dir: str, out: str, optimizer: str, device: str, lstm_dropout: str = "0.2") -> None:
    c = TrainConfig(hidden_size=16, batch_size=20, optimizer=optimizer, lr=0.01, grad_clip=0.5,
                    momentum=0.9 if optimizer == "sgd" else 0.0, dropout=float(lstm_dropout), head_dropout=0.3)
    with process_group(device, "gloo", 60) as env:
        train_set = load_mnist(Path(data_dir))[0].head(STEPS * c.batch_size)
        eager, graphed = train(c, env, train_set, False), train(c, env, train_set, True)
        report = {"world_size": env.world_size, "eager_losses": eager["losses"], "graphed_losses": graphed["losses"],
                  "bitwise_equal": all(torch.equal(a, b) for a, b in zip(eager["params"], graphed["params"])),
                  "max_abs_diff": max(float((a - b).abs().max()) for a, b in zip(eager["params"], graphed["params"])),
                  "moved": eager["moved"]}
        if env.rank == 0:
            Path(out).write_text(json.dumps(report))
    if env.is_distributed:  # as every dist_rnn command leaves a process group (see exit_without_finalizing)
        exit_without_finalizing(0)


if __name__ == "__main__":
    main(*sys.argv[1:])
