"""Callbacks of seglab.train and seglab.resume: every hook in order, a clean stop, a failing callback, a typo."""
from __future__ import annotations

import json

import pytest
import torch

import seglab
from seglab.errors import SeglabError

TINY = dict(device="cpu", base_channels=4, depth=2, crop=64, batch_size=2, augment="none", validation=20,
            learning_rate=0.01, progress=False, log=lambda *a, **k: None)


class Recorder:
    """Writes down each hook as it comes; stops the run at its first evaluation when asked to."""

    def __init__(self, stop: bool = False):
        self.stop, self.calls = stop, []

    def on_train_start(self, run):
        self.calls.append(("start", run.step, len(run.rows), (run.run_dir / "recipe.yaml").is_file()))

    def on_epoch_end(self, run):
        self.calls.append(("epoch_end", run.epoch))

    def on_evaluation(self, run, row):
        # the row reached metrics.jsonl before the hook saw it
        written = (run.run_dir / "metrics.jsonl").read_text().splitlines()
        self.calls.append(("evaluation", row["step"], json.loads(written[-1]) == row, run.best_value is not None))
        if self.stop:
            run.stop("val_dice is good enough")

    def on_checkpoint(self, run, path):
        self.calls.append(("checkpoint", path.name, path.is_file()))

    def on_train_end(self, run):
        self.calls.append(("end", run.stopped_by, run.report is not None and run.report.is_file()))

    def on_exception(self, run, error):
        self.calls.append(("exception", str(error)))


def metrics_rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_callback_sees_each_hook_stops_the_run_cleanly_and_sees_the_resumed_run(isbi_subset, tmp_path, capsys):
    recorder = Recorder(stop=True)
    # a budgeted run: its progress bar counts against the budget; the callback ends it first
    run = seglab.train(isbi_subset, out=tmp_path / "run", epochs=3, callbacks=[recorder],
                       **(TINY | dict(time_budget=600, eval_every=1, progress=True)))
    drawn = capsys.readouterr().err
    assert "epoch 1/3   0%|" in drawn and "/600 s of the budget [ETA" in drawn
    step = run.rows[0]["step"]
    assert recorder.calls == [("start", 0, 0, True), ("checkpoint", "best.pt", True),
                              ("checkpoint", "last.pt", True), ("evaluation", step, True, True),
                              ("epoch_end", 1), ("end", "callback", True)]
    # Ended as a time budget ends a run: one row, last.pt of that row, summary.json, report.html
    summary = json.loads((run.run_dir / "summary.json").read_text())
    assert summary["stopped_by"] == "callback" and summary["stop_reason"] == "Recorder: val_dice is good enough"
    assert len(metrics_rows(run.run_dir)) == summary["rows"] == 1
    assert torch.load(run.last_checkpoint, map_location="cpu", weights_only=True)["step"] == step
    assert run.stopped_by == "callback" and "stopped by a callback (Recorder: val_dice" in repr(run)

    again = Recorder()
    resumed = seglab.resume(run.run_dir, epochs=2, callbacks=[again], progress=False, log=lambda *a, **k: None)
    assert again.calls[0] == ("start", step, 1, True)
    assert again.calls[-1] == ("end", "epochs", True)
    assert [c[0] for c in again.calls].count("evaluation") == 1 and len(resumed.rows) == 2


class Boom:
    def on_evaluation(self, run, row):
        raise ValueError("boom\nsecond line")


def test_a_failing_callback_stops_the_run_in_one_line_naming_it_and_the_folder_stays_whole(isbi_subset, tmp_path):
    witness = Recorder()
    with pytest.raises(SeglabError) as caught:
        seglab.train(isbi_subset, out=tmp_path / "run", epochs=3, callbacks=[Boom(), witness], **TINY)
    message = str(caught.value)
    assert message.startswith("callback Boom.on_evaluation raised ValueError: boom;") and "\n" not in message
    assert "seglab train --resume" in message
    run_dir = tmp_path / "run"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stopped_by"] == "callback_error" and "Boom.on_evaluation" in summary["stop_reason"]
    rows = metrics_rows(run_dir)
    assert len(rows) == summary["rows"] == 1
    for name in ("best.pt", "last.pt"):  # whole, and of the row metrics.jsonl holds
        assert torch.load(run_dir / name, map_location="cpu", weights_only=True)["step"] == rows[0]["step"]
    # the other callbacks finished their period and heard why the run ended; no on_train_end
    assert witness.calls[-1] == ("exception", message)
    assert "end" not in [c[0] for c in witness.calls]
    assert seglab.Run.open(run_dir).stopped_by == "callback_error"


class Typo:
    def on_epoch_ends(self, run):
        pass


def test_a_misspelt_hook_is_refused_before_the_data_is_read(tmp_path):
    with pytest.raises(SeglabError, match="Typo has a method 'on_epoch_ends' that no hook calls: did you mean "
                                          "'on_epoch_end'"):
        seglab.train(tmp_path / "no-such-folder", callbacks=[Typo()])
    with pytest.raises(SeglabError, match="has none of the hooks"):
        seglab.train(tmp_path / "no-such-folder", callbacks=[object()])
