"""Train and test RecBole models on an exported split -- runs INSIDE the peer virtualenv.

Started by the driver (:mod:`bench.peers.recbole.run`) as
``<peer venv>/bin/python peer.py --data-path D --dataset NAME --out result.json ...``; it imports
nothing from the project (only :mod:`splitcheck`, beside it). For each model:

1. RecBole builds the data set from ``D/NAME/NAME.inter`` with leave-one-out by time
   (``LS: valid_and_test``, ``order: TO``, full ranking, grouped by user), no filtering;
2. **the split check**: RecBole's train / valid / test examples (user, target, target time,
   history) must equal those implied by ``roles.tsv`` (``loo_frame``); otherwise it writes the
   differences and exits 3 without training -- the driver then refuses to report;
3. :class:`BudgetTrainer` trains with early stopping on validation NDCG@10 and stops after the
   epoch that crosses the wall-clock budget; the best-on-validation weights are then tested.

Pitfalls handled here: ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` before torch is imported (RecBole
1.2.1 predates torch's ``weights_only`` default), and ``torch.autograd.set_detect_anomaly(False)``
after RecBole's models are imported (``sine.py`` switches anomaly detection on at import, which
halves CPU speed).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.trainer import Trainer
from recbole.utils import early_stopping, get_model, init_logger, init_seed
from splitcheck import compare, expected_examples, read_roles

torch.autograd.set_detect_anomaly(False)

EXIT_SPLIT_DIFFERS = 3

MODEL_PARAMS: dict[str, dict[str, Any]] = {
    # RecBole's SASRec defaults, spelled out: 2 layers, 2 heads, 64-d, dropout 0.5.
    "SASRec": {
        "n_layers": 2, "n_heads": 2, "hidden_size": 64, "inner_size": 256,
        "hidden_dropout_prob": 0.5, "attn_dropout_prob": 0.5, "hidden_act": "gelu",
        "layer_norm_eps": 1e-12, "initializer_range": 0.02, "loss_type": "CE",
    },
    # 64-d item embeddings and GRU state (RecBole's default state is 128), RecBole's dropout.
    "GRU4Rec": {
        "embedding_size": 64, "hidden_size": 64, "num_layers": 1, "dropout_prob": 0.3,
        "loss_type": "CE",
    },
}  # fmt: skip

log = logging.getLogger("peer")


def recbole_config(args: argparse.Namespace, model: str) -> dict[str, Any]:
    """The RecBole configuration: our split, no filtering, full ranking, CE loss."""
    work = Path(args.work)
    return {
        "data_path": str(args.data_path),
        "checkpoint_dir": str(work / "saved"),
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
        "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        # no filtering of any kind (RecBole's defaults, stated so that a changed default shows)
        "rm_dup_inter": None,
        "val_interval": None,
        "filter_inter_by_user_or_item": False,
        "user_inter_num_interval": "[0,inf)",
        "item_inter_num_interval": "[0,inf)",
        "eval_args": {
            "split": {"LS": "valid_and_test"},
            "order": "TO",
            "mode": "full",
            "group_by": "user",
        },
        "repeatable": True,  # RecBole requires it of sequential models (no history masking)
        "metrics": ["Recall", "NDCG", "MRR"],
        "topk": [10, 20],
        "valid_metric": "NDCG@10",
        "valid_metric_bigger": True,
        "MAX_ITEM_LIST_LENGTH": args.max_len,
        "train_neg_sample_args": None,
        "epochs": args.max_epochs,
        "stopping_step": args.stopping_step,
        "eval_step": 1,
        "train_batch_size": args.batch_size,
        "eval_batch_size": 4096,
        "learning_rate": args.lr,
        "use_gpu": False,
        "seed": args.seed,
        "reproducibility": True,
        "show_progress": False,
        "save_dataset": False,
        "save_dataloaders": False,
        "log_wandb": False,
        "state": "INFO",
        **MODEL_PARAMS[model],
    }


def observed_examples(loader: Any) -> list[tuple[str, str, int, tuple[str, ...]]]:
    """RecBole's examples of one split as ``(user, target, target seq, history tokens)``."""
    ds = loader._dataset
    feat = ds.inter_feat
    users = ds.id2token(ds.uid_field, feat[ds.uid_field].numpy())
    items = ds.id2token(ds.iid_field, feat[ds.iid_field].numpy())
    seqs = feat[ds.time_field].numpy()
    lists = feat[ds.item_id_list_field].numpy()
    lengths = feat[ds.item_list_length_field].numpy()
    tokens = ds.field2id_token[ds.iid_field]
    out = []
    for user, item, seq, ids, n in zip(users, items, seqs, lists, lengths, strict=True):
        if float(seq) != int(seq):
            raise ValueError(f"timestamp {seq} is not an integer seq")
        history = tuple(str(t) for t in tokens[ids[: int(n)]])
        out.append((str(user), str(item), int(seq), history))
    return out


class BudgetTrainer(Trainer):  # type: ignore[misc]
    """RecBole's trainer with a wall-clock budget; the best-on-validation weights kept in memory."""

    def fit_within(self, train_data: Any, valid_data: Any, budget_s: float) -> dict[str, Any]:
        """Train until early stopping, ``epochs``, or the first epoch end past the budget.

        Validation (every epoch) counts in the budget, as in our training. Afterwards the model
        holds the weights of the best validation epoch.
        """
        t0 = time.perf_counter()
        self.eval_collector.data_collect(train_data)
        best_state, best_epoch, history, stopped = None, -1, [], "epochs"
        for epoch in range(self.epochs):
            e0 = time.perf_counter()
            loss = self._train_epoch(train_data, epoch, show_progress=False)
            score, result = self._valid_epoch(valid_data, show_progress=False)
            self.best_valid_score, self.cur_step, stop, improved = early_stopping(
                score, self.best_valid_score, self.cur_step,
                max_step=self.stopping_step, bigger=self.valid_metric_bigger,
            )  # fmt: skip
            if improved:
                best_state = copy.deepcopy(self.model.state_dict())
                best_epoch, self.best_valid_result = epoch, dict(result)
            elapsed = time.perf_counter() - t0
            loss_value = float(sum(loss)) if isinstance(loss, tuple) else float(loss)
            history.append({"epoch": epoch, "loss": loss_value, "valid_ndcg@10": float(score),
                            "seconds": time.perf_counter() - e0, "elapsed": elapsed})  # fmt: skip
            log.info("epoch %d loss %.4f valid NDCG@10 %.4f (%.0fs of %.0fs)",
                     epoch, loss_value, score, elapsed, budget_s)  # fmt: skip
            if stop:
                stopped = "early_stopping"
                break
            if elapsed >= budget_s:
                stopped = "budget"
                break
        seconds = time.perf_counter() - t0
        if best_state is not None:
            self.model.load_state_dict(best_state)
        return {
            "train_seconds": seconds,
            "epochs": len(history),
            "best_epoch": best_epoch,
            "stopped_by": stopped,
            "best_valid": {k: float(v) for k, v in (self.best_valid_result or {}).items()},
            "history": history,
        }


def run_model(args: argparse.Namespace, model_name: str) -> dict[str, Any]:
    """Build the data, check the split, train within the budget, test; the figures."""
    config = Config(model=model_name, dataset=args.dataset,
                    config_dict=recbole_config(args, model_name))  # fmt: skip
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    data_seconds = time.perf_counter() - t0
    expected = expected_examples(read_roles(Path(args.data_path) / args.dataset / "roles.tsv"),
                                 args.max_len)  # fmt: skip
    observed = {
        "train": observed_examples(train_data),
        "valid": observed_examples(valid_data),
        "test": observed_examples(test_data),
    }
    check = compare(expected, observed)
    log.info("%s split check: equal=%s; %s", model_name, check["equal"], "; ".join(
        f"{s} {check[s]['observed']}/{check[s]['expected']}" for s in ("train", "valid", "test")
    ))  # fmt: skip
    info = {
        "model": model_name,
        "params": {k: config[k] for k in MODEL_PARAMS[model_name]},
        "users": int(dataset.user_num - 1),
        "items_ranked": int(dataset.item_num - 1),
        "interactions": int(dataset.inter_num),
        "data_seconds": data_seconds,
        "split_check": check,
    }
    if not check["equal"]:
        return info
    init_seed(config["seed"], config["reproducibility"])
    model = get_model(model_name)(config, train_data._dataset).to(config["device"])
    torch.autograd.set_detect_anomaly(False)
    trainer = BudgetTrainer(config, model)
    info["fit"] = trainer.fit_within(train_data, valid_data, args.budget_minutes * 60.0)
    t1 = time.perf_counter()
    test = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    info["test"] = {k: float(v) for k, v in test.items()}
    info["test_seconds"] = time.perf_counter() - t1
    info["n_parameters"] = int(sum(p.numel() for p in model.parameters()))
    return info


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-path", required=True, type=Path)
    p.add_argument("--dataset", required=True)
    p.add_argument("--out", required=True, type=Path, help="Result JSON.")
    p.add_argument("--work", required=True, type=Path, help="RecBole's logs and checkpoints.")
    p.add_argument("--models", default="SASRec,GRU4Rec")
    p.add_argument("--budget-minutes", type=float, default=15.0)
    p.add_argument("--seed", type=int, default=2020)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--max-epochs", type=int, default=300)
    p.add_argument("--stopping-step", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--lr", type=float, default=1e-3)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s peer %(message)s")
    args.work.mkdir(parents=True, exist_ok=True)
    os.chdir(args.work)  # RecBole writes log/ and log_tensorboard/ into the working folder
    results: dict[str, Any] = {
        "recbole": __import__("recbole").__version__,
        "torch": torch.__version__,
        "numpy": __import__("numpy").__version__,
        "seed": args.seed,
        "threads": args.threads,
        "budget_minutes": args.budget_minutes,
        "models": {},
    }
    code = 0
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        info = run_model(args, name)
        results["models"][name] = info
        args.out.write_text(json.dumps(results, indent=2))
        if not info["split_check"]["equal"]:
            log.error("split differs from loo_frame: %s", json.dumps(info["split_check"]))
            code = EXIT_SPLIT_DIFFERS
            break
    return code


if __name__ == "__main__":
    sys.exit(main())
