"""A small trainer that knows nothing of the model's internals or of the CLI.

It calls ``model(batch, targets, schedule=...) -> (output, loss)`` and ``evaluate() -> dict`` (with a ``f1``
key), and owns the loop: AdamW, linear warm-up then decay, gradient clipping and accumulation, mixed
precision, evaluation every epoch, early stopping on the selection score, the gate schedule (forced-vision
warm-up, then an annealed gate floor), checkpoints for ``--resume`` and the run folder. Under torchrun the
model is wrapped in DDP; only rank 0 evaluates and writes.
"""

from __future__ import annotations

import itertools
import json
import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from model.base import GateSchedule, SaverBase
from training import distributed as D
from training.checkpoint import EarlyStopping, Position, load_checkpoint, save_checkpoint, trainable_state

log = logging.getLogger(__name__)
STEPS = "steps.jsonl"


@dataclass
class TrainConfig:
    epochs: int = 3
    batch_size: int = 16  # the global batch: split over the processes under torchrun
    lr: float = 5e-4  # heads and LoRA adapters
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    grad_clip: float = 1.0
    patience: int = 2  # epochs without dev-F1 improvement before stopping
    seed: int = 13
    forced_vision_epochs: float = 0.5  # warm-up: every unit with evidence uses vision
    floor_anneal_epochs: float = 1.0  # then the gate floor falls linearly from 1 to 0
    max_steps: int = 0  # >0 caps optimizer steps per epoch (smoke runs)
    grad_accum: int = 1  # micro-batches per optimizer step (the effective batch is batch_size x grad_accum)
    precision: D.Precision = "fp32"  # autocast: bf16 (CUDA or CPU) or fp16 (CUDA, with a gradient scaler)
    checkpoint_every: int = 0  # >0 also checkpoints every N optimizer steps (besides every epoch's end)


def schedule_at(cfg: TrainConfig, epoch_progress: float) -> GateSchedule:
    if epoch_progress < cfg.forced_vision_epochs:
        return GateSchedule(forced=True, floor=1.0)
    t = (epoch_progress - cfg.forced_vision_epochs) / max(cfg.floor_anneal_epochs, 1e-9)
    return GateSchedule(forced=False, floor=max(0.0, 1.0 - t))


def grouped(items: Iterable[Any], n: int) -> Iterator[list[Any]]:
    it = iter(items)
    while group := list(itertools.islice(it, n)):
        yield group


class Trainer:
    def __init__(
        self,
        model: SaverBase,
        cfg: TrainConfig,
        run_dir: Path,
        batches: Callable[[int], Iterable[Any]],  # epoch -> this rank's (batch, targets) micro-batches
        micro_batches_per_epoch: int,
        evaluate: Callable[[], dict[str, Any]],
        save_best: Callable[[dict[str, Any]], None],
        dist: D.Dist | None = None,
    ) -> None:
        self.model, self.cfg, self.run_dir = model, cfg, run_dir
        self.batches, self.evaluate, self.save_best = batches, evaluate, save_best
        self.dist = dist or D.Dist()
        self.accum = max(1, cfg.grad_accum)
        steps = -(-micro_batches_per_epoch // self.accum)
        self.steps_per_epoch = min(steps, cfg.max_steps) if cfg.max_steps else steps
        model.to(self.dist.device)
        self.wrapped: nn.Module = model
        if self.dist.active:
            self.wrapped = nn.parallel.DistributedDataParallel(
                model,
                device_ids=[self.dist.device] if self.dist.device.type == "cuda" else None,
                # units without evidence skip the vision head, and the sparse router leaves experts idle
                find_unused_parameters=True,
                broadcast_buffers=False,  # no trainable buffers; the frozen encoder's are equal everywhere
            )
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        total = max(1, self.steps_per_epoch * cfg.epochs)
        warmup = max(1, int(cfg.warmup_ratio * total))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup)))
        )
        self.scaler = torch.amp.GradScaler("cuda") if D.needs_scaler(cfg.precision) else None
        self._handler: logging.Handler | None = None
        if self.dist.main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "command.txt").write_text(" ".join(sys.argv) + "\n")
            (run_dir / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
            (run_dir / "model_config.json").write_text(json.dumps(model.cfg.to_dict(), indent=2) + "\n")
            self._handler = logging.FileHandler(run_dir / "train.log")
            self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            logging.getLogger().addHandler(self._handler)  # the log next to config and metrics

    # --- checkpoints ------------------------------------------------------------------------------------
    def _checkpoint(self, pos: Position, es: EarlyStopping, elapsed: float, done: bool = False) -> None:
        rng = D.gather(D.rng_state(), self.dist)  # a collective: every rank calls it
        if not self.dist.main:
            return
        save_checkpoint(
            self.run_dir,
            {
                "weights": trainable_state(self.model),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": None if self.scaler is None else self.scaler.state_dict(),
                "position": asdict(pos),
                "early_stopping": {**asdict(es), "elapsed": elapsed},
                "rng": rng,
                "world_size": self.dist.world_size,
                "done": done,
            },
        )

    def _restore(self) -> tuple[Position, EarlyStopping, bool]:
        state = load_checkpoint(self.run_dir)
        if state["world_size"] != self.dist.world_size:
            raise SystemExit(
                f"the checkpoint was written by {state['world_size']} processes; resume with as many"
            )
        self.model.load_state_dict(state["weights"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        D.set_rng_state(state["rng"][self.dist.rank])
        pos, es = Position(**state["position"]), EarlyStopping(**state["early_stopping"])
        if self.dist.main:  # a hard kill may have logged steps after the checkpoint: they will be redone
            steps = self.run_dir / STEPS
            if steps.is_file():
                kept = [
                    ln for ln in steps.read_text().splitlines() if json.loads(ln)["step"] <= pos.global_step
                ]
                steps.write_text("".join(ln + "\n" for ln in kept))
        log.info("resumed at epoch %d, step %d (global step %d)", pos.epoch + 1, pos.step, pos.global_step)
        return pos, es, bool(state["done"])

    # --- the loop -----------------------------------------------------------------------------------------
    def _step(self, group: list[Any], schedule: GateSchedule) -> float:
        """One optimizer step over ``group``'s micro-batches; this rank's mean loss."""
        total = 0.0
        for i, (batch, targets) in enumerate(group):
            with (
                D.no_sync(self.wrapped, skip=i < len(group) - 1),
                D.autocast(self.dist.device, self.cfg.precision),
            ):
                _, loss = self.wrapped(batch, targets, schedule=schedule)
                loss = loss / len(group)
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            total += float(loss.detach())
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return total

    def fit(self, resume: bool = False, stop_after: int = 0) -> dict[str, Any] | None:
        """Train; the best selection metrics, or None when ``stop_after`` optimizer steps stopped it early
        (the checkpoint then holds everything ``resume`` needs)."""
        pos, es, done = (Position(), EarlyStopping(), False)
        if resume:
            pos, es, done = self._restore()
        else:
            D.seed_everything(self.cfg.seed, self.dist.rank)
        start = time.monotonic() - es.elapsed
        try:
            while not done and pos.epoch < self.cfg.epochs:
                if not self._epoch(pos, es, start, stop_after):
                    return None
                done = self._end_epoch(pos, es, start)
        finally:
            if self._handler is not None:
                logging.getLogger().removeHandler(self._handler)
                self._handler.close()
        es.best["train_seconds"] = round(time.monotonic() - start, 1)
        return es.best

    def _epoch(self, pos: Position, es: EarlyStopping, start: float, stop_after: int) -> bool:
        """The rest of epoch ``pos.epoch`` from step ``pos.step``; False when ``stop_after`` stopped it."""
        self.model.train()
        cfg, epoch = self.cfg, pos.epoch
        micro = itertools.islice(self.batches(epoch), pos.step * self.accum, None)
        bar = tqdm(
            total=self.steps_per_epoch,
            initial=pos.step,
            desc=f"epoch {epoch + 1}",
            mininterval=10,
            file=sys.stderr,
            disable=not self.dist.main,
        )
        steps_log = (self.run_dir / STEPS).open("a") if self.dist.main else None
        try:
            for group in grouped(micro, self.accum):
                if pos.step >= self.steps_per_epoch:
                    break
                local = self._step(group, schedule_at(cfg, epoch + pos.step / self.steps_per_epoch))
                loss = D.mean_over_ranks(local, self.dist)  # the metric every rank's batch share makes
                es.running_loss = 0.98 * es.running_loss + 0.02 * loss if pos.step else loss
                pos.step += 1
                pos.global_step += 1
                if steps_log is not None:
                    lr = self.scheduler.get_last_lr()[0]
                    row = {"step": pos.global_step, "epoch": epoch + 1, "loss": loss, "lr": lr}
                    steps_log.write(json.dumps(row) + "\n")
                    steps_log.flush()
                bar.update(1)
                bar.set_postfix(loss=f"{es.running_loss:.3f}")
                if stop_after and pos.global_step >= stop_after:
                    self._checkpoint(pos, es, time.monotonic() - start)
                    log.info(
                        "stopped after %d steps; continue with --resume %s", pos.global_step, self.run_dir
                    )
                    return False
                if cfg.checkpoint_every and pos.global_step % cfg.checkpoint_every == 0:
                    self._checkpoint(pos, es, time.monotonic() - start)
        finally:
            bar.close()
            if steps_log is not None:
                steps_log.close()
        return True

    def _end_epoch(self, pos: Position, es: EarlyStopping, start: float) -> bool:
        """Evaluate (rank 0), keep the best, decide early stopping; True when training is over."""
        epoch = pos.epoch
        stop = False
        if self.dist.main:
            self.model.eval()
            metrics = self.evaluate()
            metrics.update(
                epoch=epoch + 1, train_loss=es.running_loss, seconds=round(time.monotonic() - start, 1)
            )
            es.history.append(metrics)
            log.info("epoch %d: dev f1 %.2f loss %.3f", epoch + 1, metrics["f1"], es.running_loss)
            (self.run_dir / "metrics.json").write_text(json.dumps(es.history, indent=2) + "\n")
            if metrics["f1"] > es.best["f1"]:
                es.best, es.stale = metrics, 0
                self.save_best(metrics)
            else:
                es.stale += 1
                stop = es.stale >= self.cfg.patience
                if stop:
                    log.info("early stop after epoch %d", epoch + 1)
        stop = bool(D.broadcast(stop, self.dist))
        pos.epoch, pos.step = epoch + 1, 0
        done = stop or pos.epoch >= self.cfg.epochs
        self._checkpoint(pos, es, time.monotonic() - start, done=done)
        return done
