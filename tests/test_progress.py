"""Progress bars: the training bar against the time budget, one bar for evaluate and predict over folders."""
from __future__ import annotations

import seglab
from seglab.engine.training_bar import TrainingBar


def test_the_training_bar_counts_seconds_of_training_against_the_budget(capsys):
    bar = TrainingBar(True, budget=120, epochs=None)
    bar.start_epoch(0, batches=4, skip=0, trained_seconds=0.0)
    bar.advance(30.4)
    bar.show(loss=0.5, images_per_s=12.0)
    bar.start_epoch(1, batches=4, skip=0, trained_seconds=30.4)  # the same bar: the budget spans epochs
    bar.advance(61.0)
    bar._bar.refresh()
    drawn = capsys.readouterr().err.split("\r")[-1]
    bar.close()
    assert drawn.startswith("epoch 2  51%|") and "61/120 s of the budget [ETA " in drawn
    assert "img_s=12.0" in drawn and "loss=0.5000" in drawn


def test_without_a_budget_the_bar_counts_the_batches_of_each_epoch(capsys):
    bar = TrainingBar(True, budget=None, epochs=5)
    bar.start_epoch(2, batches=8, skip=3, trained_seconds=10.0)  # resumed after 3 batches
    bar.advance(11.0)
    bar._bar.refresh()
    drawn = capsys.readouterr().err.split("\r")[-1]
    bar.end_epoch()
    assert drawn.startswith("epoch 3/5") and "4/8" in drawn


def test_evaluate_and_predict_over_a_folder_draw_one_bar_or_plain_lines_off_a_terminal(checkpoint, isbi_subset,
                                                                                     tmp_path, capsys):
    seglab.evaluate(checkpoint, isbi_subset, split=None, progress=True)
    assert "evaluate: 100%" in capsys.readouterr().err.split("\r")[-1]
    images = isbi_subset / "images"
    seglab.predict_files(checkpoint, [images], tmp_path / "bar", progress=True)
    shown = capsys.readouterr()
    assert "predict: 100%" in shown.err and "5/5" in shown.err and " -> " not in shown.out
    seglab.predict_files(checkpoint, [images], tmp_path / "lines")  # captured: not a terminal, no bar
    shown = capsys.readouterr()
    assert "predict" not in shown.err and shown.out.count(" -> ") == 5


def test_the_log_line_counts_epochs_against_the_budget_when_the_plan_chose_them():
    from seglab.engine.runlog import epoch_line

    row = {"epoch": 19, "step": 228, "train_loss": 0.3, "lr": 1e-3, "images_per_s": 12.5, "time": 18.25}
    assert epoch_line(row, None, False, budget=120).startswith("epoch 19  train_loss 0.3000")
    assert epoch_line(row, None, True, budget=120).endswith("18.2/120 s  *best*")
    assert epoch_line(row, 50, False, budget=120).startswith("epoch 19/50") and "18.2s" in epoch_line(row, 50, False)
    assert epoch_line(row, None, False, by_step=True, budget=60).startswith("step 228 (epoch 19)")


def test_a_long_loop_draws_its_bar_only_past_its_delay(capsys):
    import time

    from seglab.progress import progress_iter

    assert list(progress_iter([1, 2, 3], "check sizes", enabled=True, delay=60)) == [1, 2, 3]
    assert capsys.readouterr().err == ""                 # done within the delay: nothing drawn
    for _ in progress_iter([1, 2], "check pixels", "pair", enabled=True, delay=0.01):
        time.sleep(0.05)
    assert "check pixels" in capsys.readouterr().err     # past it: the bar shows
