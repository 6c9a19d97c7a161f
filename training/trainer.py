"""A small trainer that knows nothing of the model's internals or of the CLI.

It calls ``step_fn(batch) -> loss`` and ``eval_fn() -> dict`` (with a ``f1`` key), and owns the loop:
AdamW, linear warm-up then decay, gradient clipping, evaluation every epoch, early stopping on dev F1,
the gate schedule (forced-vision warm-up, then an annealed gate floor), and the run folder.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from model.base import GateSchedule, SaverBase

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    epochs: int = 3
    batch_size: int = 16
    lr: float = 5e-4  # heads and LoRA adapters
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    grad_clip: float = 1.0
    patience: int = 2  # epochs without dev-F1 improvement before stopping
    seed: int = 13
    forced_vision_epochs: float = 0.5  # warm-up: every unit with evidence uses vision
    floor_anneal_epochs: float = 1.0  # then the gate floor falls linearly from 1 to 0
    max_steps: int = 0  # >0 caps steps per epoch (smoke runs)


def schedule_at(cfg: TrainConfig, epoch_progress: float) -> GateSchedule:
    if epoch_progress < cfg.forced_vision_epochs:
        return GateSchedule(forced=True, floor=1.0)
    t = (epoch_progress - cfg.forced_vision_epochs) / max(cfg.floor_anneal_epochs, 1e-9)
    return GateSchedule(forced=False, floor=max(0.0, 1.0 - t))


class Trainer:
    def __init__(
        self,
        model: SaverBase,
        cfg: TrainConfig,
        run_dir: Path,
        batches: Callable[[int], Iterable[Any]],  # epoch -> iterable of (batch, targets)
        steps_per_epoch: int,
        evaluate: Callable[[], dict[str, Any]],
        save_best: Callable[[dict[str, Any]], None],
    ) -> None:
        self.model, self.cfg, self.run_dir = model, cfg, run_dir
        self.batches, self.evaluate, self.save_best = batches, evaluate, save_best
        self.steps_per_epoch = min(steps_per_epoch, cfg.max_steps) if cfg.max_steps else steps_per_epoch
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        total = max(1, self.steps_per_epoch * cfg.epochs)
        warmup = max(1, int(cfg.warmup_ratio * total))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup)))
        )
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "command.txt").write_text(" ".join(sys.argv) + "\n")
        (run_dir / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
        (run_dir / "model_config.json").write_text(json.dumps(model.cfg.to_dict(), indent=2) + "\n")
        handler = logging.FileHandler(run_dir / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)  # the run folder keeps the log next to config and metrics

    def fit(self) -> dict[str, Any]:
        torch.manual_seed(self.cfg.seed)
        best: dict[str, Any] = {"f1": -1.0}
        history = []
        stale = 0
        start = time.monotonic()
        for epoch in range(self.cfg.epochs):
            self.model.train()
            bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch + 1}", mininterval=10, file=sys.stderr)
            running = 0.0
            for step, (batch, targets) in enumerate(self.batches(epoch)):
                if step >= self.steps_per_epoch:
                    break
                schedule = schedule_at(self.cfg, epoch + step / self.steps_per_epoch)
                _, loss = self.model(batch, targets, schedule=schedule)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
                self.optimizer.step()
                self.scheduler.step()
                running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
                bar.update(1)
                bar.set_postfix(loss=f"{running:.3f}")
            bar.close()
            self.model.eval()
            metrics = self.evaluate()
            metrics.update(epoch=epoch + 1, train_loss=running, seconds=round(time.monotonic() - start, 1))
            history.append(metrics)
            log.info("epoch %d: dev f1 %.2f loss %.3f", epoch + 1, metrics["f1"], running)
            (self.run_dir / "metrics.json").write_text(json.dumps(history, indent=2) + "\n")
            if metrics["f1"] > best["f1"]:
                best, stale = metrics, 0
                self.save_best(metrics)
            else:
                stale += 1
                if stale >= self.cfg.patience:
                    log.info("early stop after epoch %d", epoch + 1)
                    break
        best["train_seconds"] = round(time.monotonic() - start, 1)
        return best
