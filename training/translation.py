"""``python -m training translation``: English→German with attention, trained on real sentence pairs.

Data: the built-in pairs (``training.translation_data``: Ding, LibreOffice help and gettext, GNOME
help and application gettext; ``--sources`` picks some), or any ``--tsv`` files of
``source<TAB>target`` pairs. One joint sentencepiece model is trained on the training split and
saved as ``<out>/spm.model``. The model is ``training.seq2seq.Seq2Seq``.

Training sorts pairs into length buckets, uses label smoothing and Adam with the learning rate
halved when validation BLEU (greedy) stalls, and stops early on it. A checkpoint is written every
epoch (``last.pt``, resumable with ``--resume``); the end of training averages the best
``--average`` epochs when that helps on validation. ``--init models/translation/1`` warm-starts
from a shipped version (its weights read back from the ONNX graphs, its ``spm.model``), scored on
validation as epoch 0; ``--batches-per-epoch`` makes an epoch a slice of a pass (a checkpoint more
often). The test splits are then decoded greedily and with beam search: ``metrics.json`` holds
sacreBLEU BLEU and chrF per source, and ``attention_*.png`` show a few attention matrices.
"""

from __future__ import annotations

import argparse
import random
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from training.common import EarlyStopping, git_commit, plot_curves, set_seed, write_json
from training.seq2seq import Seq2Seq, Seq2SeqConfig, beam_search, greedy_decode, smoothed_nll
from training.translation_data import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    SOURCES,
    UNK_ID,
    Pair,
    load_corpus,
    load_sentencepiece,
    train_sentencepiece,
)
from training.translation_init import load_version

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training translation", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/translation"))
    p.add_argument("--data-dir", type=Path, default=Path("data"))
    p.add_argument("--tsv", type=Path, nargs="+", help="train on these source<TAB>target files instead")
    p.add_argument("--sources", nargs="+", choices=SOURCES, default=list(SOURCES), help="the built-in sources to use")
    p.add_argument("--vocab-size", type=int, default=4000, help="joint sentencepiece vocabulary")
    p.add_argument("--emb", type=int, default=256)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--attention", choices=["bahdanau", "luong"], default="bahdanau")
    p.add_argument("--attention-dim", type=int, default=256)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=80, help="drop training pairs longer than this")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument(
        "--batches-per-epoch",
        type=int,
        default=0,
        help="an epoch is this many batches of a pass over the data, for a checkpoint and a validation score more"
        " often on a slow machine (0: the whole pass)",
    )
    p.add_argument("--patience", type=int, default=4, help="epochs without a better validation BLEU")
    p.add_argument("--max-minutes", type=float, default=0.0, help="stop after the epoch that passes it (0: off)")
    p.add_argument("--valid-size", type=int, default=500, help="validation pairs per source per epoch")
    p.add_argument("--average", type=int, default=3, help="average the best N epoch checkpoints")
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--length-penalty", type=float, default=1.0)
    p.add_argument("--max-len", type=int, default=120)
    p.add_argument("--max-train-pairs", type=int, default=0, help="per source (0: all); for smoke runs")
    p.add_argument("--max-test-pairs", type=int, default=0, help="per source (0: all); for smoke runs")
    p.add_argument("--heatmaps", type=int, default=3, help="attention PNGs per source")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    p.add_argument(
        "--init",
        type=Path,
        help="warm start from a shipped version (models/translation/<v>): its weights, architecture and"
        " spm.model; its validation BLEU is scored as epoch 0, the score to beat",
    )
    return p.parse_args(argv)


# --- batching ---------------------------------------------------------------------------------


class Encoder:
    """Sentencepiece ids with EOS on the source and BOS…EOS on the target."""

    def __init__(self, model_path: Path) -> None:
        self.sp = load_sentencepiece(model_path)

    def source(self, text: str) -> list[int]:
        return [*self.sp.encode(text), EOS_ID]

    def target(self, text: str) -> list[int]:
        return [BOS_ID, *self.sp.encode(text), EOS_ID]

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(ids)


def pad(rows: list[list[int]]) -> torch.Tensor:
    out = torch.full((len(rows), max(map(len, rows))), PAD_ID, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row)
    return out


def collate(examples: list[tuple[list[int], list[int]]]) -> Batch:
    """``(src, src_lengths, tgt_in, tgt_out)``; ``tgt_in`` starts with BOS, ``tgt_out`` ends with EOS."""
    src = pad([s for s, _ in examples])
    lengths = torch.tensor([len(s) for s, _ in examples])
    tgt = pad([t for _, t in examples])
    return src, lengths, tgt[:, :-1], tgt[:, 1:]


def length_batches(examples: list[tuple[list[int], list[int]]], batch_size: int, rng: random.Random) -> list[Batch]:
    """Batches of similar lengths (sorted with a little noise), in random order."""
    order = sorted(range(len(examples)), key=lambda i: (len(examples[i][1]) + rng.random(), len(examples[i][0])))
    batches = [collate([examples[i] for i in order[k : k + batch_size]]) for k in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


# --- evaluation -------------------------------------------------------------------------------


def epoch_batches(examples: list[tuple[list[int], list[int]]], args: argparse.Namespace, epoch: int) -> list[Batch]:
    """The batches of ``epoch`` (from 1), the same whether resumed or not: a whole pass over the data, or with
    ``--batches-per-epoch K`` the ``K`` batches of a pass that come next (each pass shuffled anew)."""
    if not args.batches_per_epoch:
        return length_batches(examples, args.batch_size, random.Random(args.seed * 1000 + epoch))
    parts = -(-len(examples) // (args.batch_size * args.batches_per_epoch))
    data_pass, part = divmod(epoch - 1, parts)
    batches = length_batches(examples, args.batch_size, random.Random(args.seed * 1000 + data_pass + 1))
    return batches[part * args.batches_per_epoch : (part + 1) * args.batches_per_epoch]


@torch.no_grad()
def translate(
    model: Seq2Seq,
    encoder: Encoder,
    sources: list[str],
    beam: int,
    length_penalty: float,
    max_len: int,
    batch_size: int = 64,
) -> tuple[list[str], list[list[int]], list[torch.Tensor]]:
    """Hypotheses in input order (batches sorted by length), their ids and attention matrices."""
    model.eval()
    ids = [encoder.source(s)[:max_len] for s in sources]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    hyps: list[str] = [""] * len(ids)
    hyp_ids: list[list[int]] = [[] for _ in ids]
    attns: list[torch.Tensor] = [torch.empty(0)] * len(ids)
    for k in range(0, len(order), batch_size):
        chunk = order[k : k + batch_size]
        src = pad([ids[i] for i in chunk])
        lengths = torch.tensor([len(ids[i]) for i in chunk])
        if beam > 1:
            tokens, attention = beam_search(model, src, lengths, beam, length_penalty, max_len)
        else:
            tokens, attention = greedy_decode(model, src, lengths, max_len)
        for i, tok, att in zip(chunk, tokens, attention, strict=True):
            hyps[i], hyp_ids[i], attns[i] = encoder.decode(tok), tok, att
    return hyps, hyp_ids, attns


def score(hyps: list[str], refs: list[str]) -> dict[str, float]:
    import sacrebleu

    return {
        "bleu": round(sacrebleu.corpus_bleu(hyps, [refs]).score, 2),
        "chrf": round(sacrebleu.corpus_chrf(hyps, [refs]).score, 2),
    }


def validation_bleu(model: Seq2Seq, encoder: Encoder, valid: dict[str, list[Pair]], args: argparse.Namespace) -> float:
    """Greedy corpus BLEU over the union of the (capped) validation splits."""
    pairs = [p for split in valid.values() for p in split]
    hyps, _, _ = translate(model, encoder, [s for s, _ in pairs], 1, args.length_penalty, args.max_len)
    return score(hyps, [t for _, t in pairs])["bleu"]


def plot_attention(attention: torch.Tensor, src: list[str], hyp: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(0.35 * len(src) + 2.5, 0.3 * len(hyp) + 2))
    axis.imshow(attention.numpy(), cmap="Greys", vmin=0, vmax=1, aspect="auto")
    axis.set_xticks(range(len(src)), src, rotation=90, fontsize=8)
    axis.set_yticks(range(len(hyp)), hyp, fontsize=8)
    axis.set_xlabel("source (English)")
    axis.set_ylabel("output (German)")
    axis.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- training ---------------------------------------------------------------------------------


def average_state(paths: list[Path]) -> dict[str, torch.Tensor]:
    states = [torch.load(p, map_location="cpu") for p in paths]
    return {k: sum(s[k] for s in states) / len(states) for k in states[0]}


def train_epoch(
    model: Seq2Seq, optimizer: torch.optim.Optimizer, batches: list[Batch], smoothing: float, epoch: int
) -> float:
    model.train()
    total, tokens = 0.0, 0
    bar = tqdm(batches, desc=f"epoch {epoch}", unit="batch", leave=False)
    for src, lengths, tgt_in, tgt_out in bar:
        loss = smoothed_nll(model(src, lengths, tgt_in), tgt_out, smoothing)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        n = int((tgt_out != PAD_ID).sum())
        total, tokens = total + loss.item() * n, tokens + n
        bar.set_postfix(loss=f"{total / tokens:.3f}")
    return total / tokens


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    set_seed(args.seed)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    corpus, counts = load_corpus(args.data_dir, args.tsv, args.seed, tuple(args.sources))
    if args.max_train_pairs:
        for splits in corpus.values():
            splits["train"] = splits["train"][: args.max_train_pairs]
    train_pairs = [p for splits in corpus.values() for p in splits["train"]]
    valid = {name: splits["valid"][: args.valid_size] for name, splits in corpus.items()}
    test = {name: splits["test"][: args.max_test_pairs or None] for name, splits in corpus.items()}
    sizes = {name: {split: len(pairs) for split, pairs in splits.items()} for name, splits in corpus.items()}
    print(f"translation: pairs per source and split {sizes}")

    spm_path = out / "spm.model"
    if args.init:
        model, init_spm = load_version(args.init)
        shutil.copyfile(init_spm, spm_path)
        config = model.config
    elif not (args.resume and spm_path.exists()):
        train_sentencepiece([t for pair in train_pairs for t in pair], out / "spm", args.vocab_size)
    encoder = Encoder(spm_path)
    examples = [(encoder.source(s), encoder.target(t)) for s, t in train_pairs]
    examples = [e for e in examples if len(e[0]) <= args.max_tokens and len(e[1]) <= args.max_tokens + 1]

    if not args.init:
        config = Seq2SeqConfig(
            vocab_size=encoder.sp.get_piece_size(),
            emb=args.emb,
            hidden=args.hidden,
            attention=args.attention,
            attention_dim=args.attention_dim,
            dropout=args.dropout,
        )
        model = Seq2Seq(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"translation: {len(examples)} training pairs, vocab {config.vocab_size}, {n_params / 1e6:.2f}M parameters")
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=1)
    stopper = EarlyStopping(args.patience)
    history: dict[str, list[float]] = {"train_loss": [], "valid_bleu": [], "lr": []}
    epoch_scores: dict[int, float] = {}
    first_epoch = 1
    if args.resume and (out / "last.pt").exists():
        ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        stopper.__dict__.update(ckpt["stopper"])
        history, epoch_scores = ckpt["history"], ckpt["epoch_scores"]
        first_epoch = ckpt["epoch"] + 1
        print(f"translation: resumed after epoch {ckpt['epoch']}")
    elif args.init:
        # Epoch 0 is the warm-start version itself: a later epoch is kept only if it beats it.
        epoch_scores[0] = validation_bleu(model, encoder, valid, args)
        stopper.improved(epoch_scores[0], 0)
        torch.save(model.state_dict(), out / "epoch0.pt")
        torch.save(model.state_dict(), out / "best.pt")
        print(f"translation: {args.init} scores valid BLEU {epoch_scores[0]:.2f} (epoch 0)")

    for epoch in range(first_epoch, args.epochs + 1):
        if stopper.should_stop:
            break
        loss = train_epoch(model, optimizer, epoch_batches(examples, args, epoch), args.label_smoothing, epoch)
        bleu = validation_bleu(model, encoder, valid, args)
        scheduler.step(bleu)
        history["train_loss"].append(round(loss, 4))
        history["valid_bleu"].append(bleu)
        history["lr"].append(optimizer.param_groups[0]["lr"])
        epoch_scores[epoch] = bleu
        torch.save(model.state_dict(), out / f"epoch{epoch}.pt")
        if stopper.improved(bleu, epoch):
            torch.save(model.state_dict(), out / "best.pt")
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "stopper": dict(stopper.__dict__),
                "history": history,
                "epoch_scores": epoch_scores,
                "epoch": epoch,
            },
            out / "last.pt",
        )
        minutes = (time.time() - started) / 60
        print(f"epoch {epoch}: loss {loss:.3f}  valid BLEU {bleu:.2f}  lr {history['lr'][-1]:.1e}  {minutes:.1f} min")
        if args.max_minutes and minutes > args.max_minutes:
            print(f"translation: time budget of {args.max_minutes} min reached")
            break

    model.load_state_dict(torch.load(out / "best.pt", map_location="cpu"))
    chosen, best_bleu = f"best epoch {stopper.best_epoch}", stopper.best or 0.0
    top = sorted(epoch_scores, key=lambda e: -epoch_scores[e])[: args.average]
    if len(top) > 1:
        model.load_state_dict(average_state([out / f"epoch{e}.pt" for e in top]))
        averaged_bleu = validation_bleu(model, encoder, valid, args)
        print(
            f"translation: average of epochs {sorted(top)}: valid BLEU {averaged_bleu:.2f}"
            f" (best single {best_bleu:.2f})"
        )
        if averaged_bleu > best_bleu:
            chosen, best_bleu = f"average of epochs {sorted(top)}", averaged_bleu
        else:
            model.load_state_dict(torch.load(out / "best.pt", map_location="cpu"))
    torch.save({"config": config.to_dict(), "model": model.state_dict()}, out / "model.pt")

    results: dict[str, Any] = {}
    for name, pairs in test.items():
        sources, refs = [s for s, _ in pairs], [t for _, t in pairs]
        results[name] = {"pairs": len(pairs)}
        for label, beam in (("greedy", 1), (f"beam{args.beam}", args.beam)):
            hyps, hyp_ids, attns = translate(model, encoder, sources, beam, args.length_penalty, args.max_len)
            results[name][label] = score(hyps, refs)
            print(f"test {name} {label}: {results[name][label]}")
            if beam == 1:
                (out / f"test_{name}.greedy.txt").write_text("".join(h + "\n" for h in hyps))
                for i in range(min(args.heatmaps, len(pairs))):
                    src_pieces = encoder.sp.id_to_piece(encoder.source(sources[i])[: args.max_len])
                    hyp_pieces = encoder.sp.id_to_piece([*hyp_ids[i], EOS_ID])
                    plot_attention(attns[i], src_pieces, hyp_pieces, out / f"attention_{name}_{i}.png", sources[i])
            else:
                (out / f"test_{name}.beam.txt").write_text("".join(h + "\n" for h in hyps))
    plot_curves(history, out / "curves.png", "translation")
    write_json(
        out / "metrics.json",
        {
            "test": results,
            "valid_bleu_greedy": best_bleu,
            "chosen": chosen,
            "sizes": sizes,
            "filter_counts": counts,
            "history": history,
            "parameters": n_params,
            "config": config.to_dict(),
            "args": {k: str(v) for k, v in vars(args).items()},
            "minutes": round((time.time() - started) / 60, 1),
            "git_commit": git_commit(),
            "tokenizer": {"model": "spm.model", "pad_id": PAD_ID, "unk_id": UNK_ID, "bos_id": BOS_ID, "eos_id": EOS_ID},
        },
    )
    print(f"translation: wrote {out / 'metrics.json'}")


if __name__ == "__main__":
    main()
