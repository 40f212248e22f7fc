"""--track mlflow and --track wandb: one tiny run logged to a real MLflow tracking server process (SQLite
backend; conftest's mlflow_server) and to W&B in its offline mode, each read back with the tracker's own
client or files."""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

import seglab

mlflow = pytest.importorskip("mlflow")
wandb_proto = pytest.importorskip("wandb.proto.wandb_internal_pb2")

TINY = dict(device="cpu", base_channels=4, depth=2, crop=64, batch_size=2, augment="none", validation=20,
            learning_rate=0.01, epochs=2)
SENT = ("best.pt", "report.html", "plan.json", "recipe.yaml")


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, isbi_subset, mlflow_server):
    """ONE tiny run tracked by both (the MLflow server was started when the tests were collected)."""
    folder, uri = tmp_path_factory.mktemp("tracking"), mlflow_server.uri
    variables = {"MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_NAME": "seglab-test", "WANDB_MODE": "offline",
                 "WANDB_DIR": str(folder), "WANDB_CACHE_DIR": str(folder / "cache"), "WANDB_PROJECT": "seglab-test",
                 "WANDB_CONFIG_DIR": str(folder / "config"), "WANDB_DATA_DIR": str(folder / "data"),
                 "WANDB_SILENT": "true"}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in variables.items():
            patch.setenv(key, value)
        run = seglab.train(isbi_subset, out=folder / "run", track=["mlflow", "wandb"], progress=False,
                           log=lambda *a, **k: None, **TINY)
        yield run, uri, folder


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_mlflow_holds_the_params_every_metrics_row_and_the_runs_files(tracked, tmp_path):
    run, uri, _ = tracked
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("seglab-test")
    (logged,) = client.search_runs([experiment.experiment_id])
    assert logged.info.status == "FINISHED" and logged.info.run_name == "run"
    params = logged.data.params
    assert params["train.epochs"] == "2" and params["model.base_channels"] == "4" and params["data.crop"] == "[64]"
    assert any(key.startswith("plan.") for key in params)  # the plan's choices and reasons
    for key in ("train_loss", "val_dice"):
        history = client.get_metric_history(logged.info.run_id, key)
        assert [(m.step, m.value) for m in history] == [(row["step"], pytest.approx(row[key])) for row in run.rows]
    assert logged.data.tags["seglab.stopped_by"] == "epochs"
    names = {artifact.path for artifact in client.list_artifacts(logged.info.run_id)}
    assert set(SENT) <= names
    for name in ("best.pt", "plan.json"):
        copy = Path(client.download_artifacts(logged.info.run_id, name, str(tmp_path)))
        assert sha256(copy) == sha256(run.run_dir / name)


def wandb_records(path: Path):
    """The records of a W&B offline run file: a 7-byte header, then LevelDB-log chunks (7-byte
    headers: crc, length, type full/first/middle/last) in 32 KiB blocks, each a Record protobuf."""
    data, position, pending = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while position + 7 <= len(data):
        left = 32768 - position % 32768
        if left < 7:
            position += left
            continue
        length, kind = int.from_bytes(data[position + 4:position + 6], "little"), data[position + 6]
        chunk, position = data[position + 7:position + 7 + length], position + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_proto.Record()
            record.ParseFromString(pending)
            yield record


def test_wandb_offline_run_holds_the_params_every_metrics_row_and_the_runs_files(tracked):
    run, _, folder = tracked
    (offline,) = (folder / "wandb").glob("offline-run-*")
    records = list(wandb_records(next(offline.glob("run-*.wandb"))))
    (started,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert started.project == "seglab-test" and started.display_name == "run"
    config = {item.key: json.loads(item.value_json) for item in started.config.update}
    assert config["train.epochs"] == "2" and any(key.startswith("plan.") for key in config)
    history = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    assert [(h["_step"], h["val_dice"]) for h in history] == [(row["step"], pytest.approx(row["val_dice"]))
                                                              for row in run.rows]
    saved = {f.path for r in records if r.WhichOneof("record_type") == "files" for f in r.files.files}
    assert set(SENT) <= saved
    assert sha256(offline / "files" / "best.pt") == sha256(run.run_dir / "best.pt")
    assert any(r.WhichOneof("record_type") == "exit" and r.exit.exit_code == 0 for r in records)


def test_a_tracker_whose_package_is_missing_is_one_line_naming_the_extra(isbi_subset, tmp_path, monkeypatch):
    from conftest import run_main

    monkeypatch.setitem(sys.modules, "wandb", None)  # as if it were not installed
    result = run_main("train", isbi_subset, "--track", "wandb", "--epochs", 1, "--out", tmp_path / "run",
                      "--device", "cpu", "--no-progress")
    assert result.rc == 1 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines() == [
        "seglab: error: --track wandb needs the wandb package: pip install 'seglab[wandb]'"]
    assert not (tmp_path / "run").exists()
