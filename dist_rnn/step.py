"""The training step: one optimizer step on fixed-shape tensors, run eagerly (`EagerStep`) or captured in
CUDA graphs and replayed (`GraphedStep`, --cuda-graphs on: a small model's GPU step is bound by kernel launches);
both keep the loss summed on the device until read (docs/design-notes.md, 'The training step').
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from dist_rnn import distributed
from dist_rnn.amp import autocast
from dist_rnn.data import InputView
from dist_rnn.distributed import DistEnv

WARMUP_STEPS = 3  # eager steps on a side stream before capture (cuDNN and the allocator settle), then undone


def loss_function(logits: torch.Tensor, y: torch.Tensor, kind: str,
                  class_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Cross-entropy, or (to compare, see docs/experiments.md) the squared error between softmax outputs and
    one-hot targets: averaged over batch and classes ('mse'), or summed over the classes ('mse-sum').
    `class_weight` weighs each sample's cross-entropy by its class's; still a mean over the batch (not
    over the weights, as F.cross_entropy's weight would), so every rank's part of a global batch counts alike."""
    if kind in ("mse", "mse-sum"):
        error = F.mse_loss(torch.softmax(logits.float(), dim=1), F.one_hot(y, logits.shape[1]).float())
        return error * logits.shape[1] if kind == "mse-sum" else error
    if class_weight is not None:
        return (F.cross_entropy(logits, y, reduction="none") * class_weight[y]).mean()
    return F.cross_entropy(logits, y)


def graphs_refusal(choice: str, device: torch.device, precision: str, scheduled: bool = False,
                   accumulate: int = 1, variable_length: bool = False) -> Optional[str]:
    """Why --cuda-graphs cannot be used here (None: it can, or was not asked for)."""
    if choice != "on":  # "auto" stays off until graphed training is measured on a GPU (issue 14)
        return None
    if device.type != "cuda":
        return "CUDA graphs need a CUDA device: training eagerly"
    if scheduled:  # the captured Adam reads the rate as a number fixed at capture
        return "CUDA graphs would keep the learning rate of the capture and ignore --lr-schedule / --warmup-steps: " \
               "training eagerly"
    if variable_length:  # a captured graph replays one shape; packed batches change theirs every step
        return "CUDA graphs replay fixed shapes, and sequences of different lengths are packed anew each step: " \
               "training eagerly"
    if accumulate > 1:
        return "CUDA graphs capture one forward and backward per step, not --grad-accum's several: training eagerly"
    if precision == "fp16":
        return "CUDA graphs are not used with fp16's GradScaler here (its unscale, skip and rescale steps were " \
               "not written for capture): training eagerly (bf16 needs no scaler)"
    return None


class EagerStep:
    """One optimizer step as written; the loss summed on the device until read."""

    autocast_cache = True  # autocast keeps the casts of the weights within a forward

    def __init__(self, model: nn.Module, params: list[nn.Parameter], optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, view: InputView, precision: str, loss: str,
                 grad_clip: Optional[float], device: torch.device, accumulate: int = 1,
                 class_weight: Optional[torch.Tensor] = None):
        self.model, self.params, self.optimizer, self.scaler = model, params, optimizer, scaler
        self.view, self.precision, self.loss, self.grad_clip = view, precision, loss, grad_clip
        self.class_weight = class_weight
        self.device, self.accumulate = device, accumulate
        self.loss_sum = torch.zeros((), device=device)
        self.steps_summed = 0

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """One step on this rank's part of the global batch (uint8 images, labels); with
        --grad-accum K, in K equal micro-batches whose gradients add up to the whole part's."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.accumulate == 1:
            self._forward_backward(images, labels)
        else:
            no_sync = getattr(self.model, "no_sync", contextlib.nullcontext)  # DDP's; a bare model has none
            chunks = list(zip(images.chunk(self.accumulate), labels.chunk(self.accumulate)))
            for k, (x, y) in enumerate(chunks):
                # DDP averages the gradients over ranks once, in the last micro-batch's backward
                with no_sync() if k < len(chunks) - 1 else contextlib.nullcontext():
                    self._forward_backward(x, y, weight=1 / self.accumulate)
        self._update()
        self.steps_summed += 1

    def _forward_backward(self, images: torch.Tensor, labels: torch.Tensor, weight: float = 1.0) -> None:
        """Forward and backward; the loss, a mean over the batch, counts `weight` of the step's
        (1/K for each of K equal micro-batches: their gradients sum to the whole batch's mean)."""
        with autocast(self.precision, self.device, cache=self.autocast_cache):
            loss = loss_function(self.model(self.view(images)), labels, self.loss, self.class_weight)
        if weight != 1.0:
            loss = loss * weight
        self.scaler.scale(loss).backward()
        self.loss_sum += loss.detach()

    def _update(self) -> None:
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the fp16-scaled ones
            nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def inputs(self) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """The tensors the feeder should write each batch into (None: any tensors will do)."""
        return None

    def take_mean_loss(self) -> torch.Tensor:
        """This rank's mean loss over the steps since the last call (waits for the device); restarts the sum."""
        mean = self.loss_sum / max(self.steps_summed, 1)
        self.loss_sum.zero_()
        self.steps_summed = 0
        return mean


class GraphedStep(EagerStep):
    """The same step captured in CUDA graphs and replayed (docs/design-notes.md, 'The training step').

    `capture=False` runs the very same phases (static buffers, flat gradients, the eager mean
    between them) without recording them: how the logic is tested on CPU, where graphs do not exist.
    """

    autocast_cache = False  # nothing cached across a captured region

    def __init__(self, model: nn.Module, params: list[nn.Parameter], optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, view: InputView, precision: str, loss: str,
                 grad_clip: Optional[float], env: DistEnv, local_batch: int, image_shape: tuple[int, ...],
                 capture: bool = True, input_dtype: torch.dtype = torch.uint8,
                 class_weight: Optional[torch.Tensor] = None):
        super().__init__(model, params, optimizer, scaler, view, precision, loss, grad_clip, env.device,
                         class_weight=class_weight)
        self.env, self.capture = env, capture
        # the feeder gathers into these: uint8 images, or float32 sequences
        self.images = torch.zeros(local_batch, *image_shape, dtype=input_dtype, device=env.device)
        self.labels = torch.zeros(local_batch, dtype=torch.long, device=env.device)
        self.grads = torch.zeros(sum(p.numel() for p in params), device=env.device)
        offset = 0
        for p in params:  # every gradient a view into one buffer: one all-reduce, one fixed address
            p.grad = self.grads[offset: offset + p.numel()].view_as(p)
            offset += p.numel()
        self.phases: list[Callable[[], None]] = self._record()

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """One step on the batch the feeder wrote into self.images / self.labels (copied there if not)."""
        if images.data_ptr() != self.images.data_ptr():
            self.images.copy_(images)
            self.labels.copy_(labels)
        for phase in self.phases:
            phase()
        self.steps_summed += 1

    def inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The fixed tensors the graph reads its batch from."""
        return self.images, self.labels

    def _backward_phase(self) -> None:
        self._forward_backward(self.images, self.labels)

    def _update_phase(self) -> None:
        self._update()
        self.grads.zero_()  # the next backward accumulates into the same buffer

    def _mean_phase(self) -> None:
        distributed.rank_ordered_mean_(self.grads, self.env)

    def _record(self) -> list[Callable[[], None]]:
        """The phases of one step, captured (one graph alone, two around the gradient mean with
        several processes); the warm-up steps that capture needs are undone (weights, optimizer
        state, random streams, cuDNN's dropout state), so the run starts with the first replay as
        the eager run starts with its first step."""
        eager = [self._backward_phase, self._mean_phase, self._update_phase] if self.env.is_distributed \
            else [self._backward_phase, self._update_phase]
        before = self._snapshot()
        # Capture wants its kernels warmed up (cuDNN plans, allocations), on a side stream.
        side = torch.cuda.Stream(self.device) if self.capture else None
        if side is not None:
            side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
            for _ in range(WARMUP_STEPS):
                for phase in eager:
                    phase()
        if side is not None:
            torch.cuda.current_stream(self.device).wait_stream(side)
        # Undo the warm-up before capture (capturing records kernels without running them: nothing
        # to undo after it): weights, optimizer state, and the random streams, so that the first
        # replay draws what an eager first step would.
        self._restore(before)
        torch.set_rng_state(before["rng"])
        if self.capture:
            torch.cuda.set_rng_state(before["cuda_rng"], self.device)
            self._reseed_cudnn_dropout()
            torch.set_rng_state(before["rng"])
        if not self.capture:
            return eager
        if self.env.is_distributed:
            return [self._graph(self._backward_phase), self._mean_phase, self._graph(self._update_phase)]
        return [self._graph(lambda: (self._backward_phase(), self._update_phase()))]

    def _reseed_cudnn_dropout(self) -> None:
        """Give cuDNN's RNN dropout its first-step state again, now and outside the capture: a probe LSTM
        makes cuDNN re-seed it from the restored generator, instead of a later eager forward freeing the buffer
        the graph writes to (docs/design-notes.md, 'Re-seeding cuDNN's dropout before capture')."""
        rnn = self.model.rnn if isinstance(getattr(self.model, "rnn", None), nn.RNNBase) else None
        if rnn is None or not rnn.dropout or not rnn.training:
            return  # no dropout state in play: the eager first step does not seed one either
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "dropout expects num_layers greater than 1": that is the point
            probe = nn.LSTM(1, 1, num_layers=1, dropout=rnn.dropout, batch_first=True).to(self.device)
        probe(torch.zeros(1, 1, 1, device=self.device))

    def _graph(self, fn: Callable[[], object]) -> Callable[[], None]:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return graph.replay

    def _snapshot(self) -> dict:
        """Parameters, optimizer state and random streams before warm-up (copies)."""
        return {"rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(self.device) if self.capture else None,
                "params": [p.detach().clone() for p in self.params],
                "state": {id(p): {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
                          for p, s in self.optimizer.state.items()}}

    @torch.no_grad()
    def _restore(self, before: dict) -> None:
        """Undo the warm-up in place (a graph holds the addresses): weights as they were, optimizer
        state as it was (zeros where it did not exist yet: a fresh Adam or momentum buffer), no
        gradient, no loss summed."""
        for p, saved in zip(self.params, before["params"]):
            p.copy_(saved)
        for p, state in self.optimizer.state.items():
            saved = before["state"].get(id(p), {})
            for key, value in state.items():
                if torch.is_tensor(value) and key in saved:
                    value.copy_(saved[key])
                elif torch.is_tensor(value):
                    value.zero_()
        self.grads.zero_()
        self.loss_sum.zero_()
