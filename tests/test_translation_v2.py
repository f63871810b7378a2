"""Translation version 2's training pieces: warm start from ONNX, epochs of K batches, Mallard help pairs."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from training.translation import epoch_batches
from training.translation_data import extract_mallard, mallard_blocks
from training.translation_init import load_version

V1 = Path(__file__).resolve().parents[1] / "models" / "translation" / "1"


def test_warm_start_equals_the_shipped_graphs() -> None:
    """The weights read back from version 1's ONNX files give its encoder and decoder step outputs."""
    model, spm = load_version(V1)
    model.eval()
    assert spm == V1 / "spm.model"
    ids, lengths = np.array([[50, 60, 70, 80, 3], [90, 100, 3, 0, 0]]), np.array([5, 3])
    encoded = ort.InferenceSession(str(V1 / "encoder.onnx")).run(None, {"src_ids": ids, "src_lengths": lengths})
    with torch.no_grad():
        mine = model.encode(torch.from_numpy(ids), torch.from_numpy(lengths))
    for theirs, ours in zip(encoded, mine, strict=True):
        np.testing.assert_allclose(theirs.astype(np.float32), ours.numpy().astype(np.float32), atol=1e-5)
    feed = {"prev_tokens": np.array([2, 2]), "state": encoded[3], "encoder_outputs": encoded[0], "keys": encoded[1],
            "mask": encoded[2]}
    stepped = ort.InferenceSession(str(V1 / "decoder_step.onnx")).run(None, feed)
    with torch.no_grad():
        ours = model.step(torch.tensor([2, 2]), mine[3], mine[0], mine[1], mine[2])
    for theirs, mine_out in zip(stepped, ours, strict=True):
        np.testing.assert_allclose(theirs, mine_out.numpy(), atol=1e-4)


def test_epochs_of_k_batches_cover_each_pass_once() -> None:
    examples = [([5] * (i % 7 + 1), [6] * (i % 5 + 1)) for i in range(100)]  # 100 pairs: 13 batches of 8
    args = argparse.Namespace(batch_size=8, batches_per_epoch=5, seed=0)
    first_pass = [b for epoch in (1, 2, 3) for b in epoch_batches(examples, args, epoch)]
    assert [len(epoch_batches(examples, args, e)) for e in (1, 2, 3, 4)] == [5, 5, 3, 5]
    assert sum(len(b[0]) for b in first_pass) == 100
    again = epoch_batches(examples, args, 2)  # the same batches on a resume
    assert all(torch.equal(a[0], b[0]) for a, b in zip(again, first_pass[5:10], strict=True))


PAGE = """<?xml version="1.0" encoding="utf-8"?>
<page xmlns="http://projectmallard.org/1.0/" id="p">
  <info><desc>{desc}</desc><credit><name>Someone</name></credit></info>
  <title>{title}</title>
  <p>{p1} <gui>{gui}</gui>.</p>
  <list><item><p>{p2}</p></item></list>
</page>
"""


def test_mallard_pages_pair_by_block_position(tmp_path: Path) -> None:
    en = {"desc": "Change the size of the text on the screen.", "title": "Make text larger",
          "p1": "Open the settings and click", "gui": "Accessibility", "p2": "Switch Large Text to on."}
    de = {"desc": "Die Größe des Textes auf dem Bildschirm ändern.", "title": "Text vergrößern",
          "p1": "Öffnen Sie die Einstellungen und klicken Sie auf", "gui": "Barrierefreiheit",
          "p2": "Schalten Sie Großer Text ein."}
    for lang, words in (("C", en), ("de", de)):
        (tmp_path / lang / "app").mkdir(parents=True)
        (tmp_path / lang / "app" / "a.page").write_text(PAGE.format(**words), encoding="utf-8")
    broken = PAGE.replace("<list><item><p>{p2}</p></item></list>", "")  # a German page with a block missing
    (tmp_path / "C" / "app" / "b.page").write_text(PAGE.format(**en), encoding="utf-8")
    (tmp_path / "de" / "app" / "b.page").write_text(broken.format(**de), encoding="utf-8")
    assert [tag for tag, _ in mallard_blocks(tmp_path / "C" / "app" / "a.page")] == ["desc", "title", "p", "p"]
    extraction = extract_mallard(tmp_path)
    assert extraction.counts["pages"] == 2 and extraction.counts["pages_misaligned"] == 1
    assert extraction.pairs == [
        (en["desc"], de["desc"]),
        ("Open the settings and click Accessibility.",
         "Öffnen Sie die Einstellungen und klicken Sie auf Barrierefreiheit."),
        (en["p2"], de["p2"]),
    ]  # the title has no sentence end and is filtered out
