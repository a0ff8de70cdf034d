"""The facegrid command line on the embedded default: models, eval, collections, index, search, faces."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from typer.testing import CliRunner

from jobs.cli.main import app
from tests.conftest import LFW, lfw_photos

runner = CliRunner()


@pytest.fixture(scope="module")
def env(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    values = {"FACEGRID_MODEL_DIR": str(model_dir), "FACEGRID_STORE": str(tmp_path_factory.mktemp("cli-store"))}
    yield values
    if ray.is_initialized():
        ray.shutdown()


def run(env: dict[str, str], *args: str) -> dict[str, Any]:
    result = runner.invoke(app, [*args, "--json"], env=env)
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def test_models_list_shows_cards(env: dict[str, str]) -> None:
    cards = run(env, "models", "list")["models"]
    by_id = {c["model_id"]: c for c in cards}
    assert set(by_id) == {"sface-2021dec", "dlib-resnet-v1", "yunet-2023mar", "mtcnn-pnet", "mtcnn-rnet", "mtcnn-onet"}
    assert all(len(c["sha256"]) == 64 and c["licence"] for c in cards)
    for embedder in ("sface-2021dec", "dlib-resnet-v1"):  # both cards carry their calibration and caveats
        card = by_id[embedder]
        assert card["role"] == "embedder" and card["training_data"] and card["aligner"]
        assert card["calibration"]["similarity_at_fmr"]["1e-5"] is not None


def test_models_list_measures_every_recipe_here(env: dict[str, str], lfw_images: Path, tmp_path: Path) -> None:
    for photo in lfw_photos(lfw_images, 2):
        (tmp_path / photo.name).write_bytes(photo.read_bytes())
    recipes = run(env, "models", "list", "--measure", "--images", str(tmp_path), "--photos", "2")["recipes"]
    assert all(row["images_per_s_one_core"] > 0 for row in recipes)
    assert {r["recipe"]: r["fused_with"] for r in recipes}["yunet-onet-sface-dlib-mirror"] == "dlib-resnet-v1"
    empty = runner.invoke(app, ["models", "list", "--measure", "--images", str(tmp_path / "none")], env=env)
    assert empty.exit_code == 2 and "no .jpg, .jpeg or .png photos" in empty.output, empty.output


def test_unknown_model_stops_at_the_command_line(env: dict[str, str]) -> None:
    for args in (["collections", "create", "x", "--model", "arcface"], ["bench", "embed", "--model", "arcface"]):
        result = runner.invoke(app, args, env=env)
        assert result.exit_code == 2 and "unknown embedding model 'arcface'" in result.output, result.output


def test_a_dashboard_that_does_not_answer_is_one_line(env: dict[str, str], tmp_path: Path) -> None:
    """--address pointing nowhere: every jobs command and a submitted index say so plainly (exit 2), no traceback."""
    from jobs.s3local import free_port

    nowhere = {**env, "RAY_ADDRESS": f"http://127.0.0.1:{free_port()}"}
    for args in (["jobs", "list"], ["jobs", "status", "x"], ["jobs", "logs", "x"], ["index", "c", str(tmp_path)]):
        result = runner.invoke(app, args, env=nowhere)
        assert result.exit_code == 2, (args, result.output)
        assert "CLUSTER_UNAVAILABLE" in result.output and "Ray dashboard" in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)


def test_eval_lfw_quick(env: dict[str, str], lfw_images: Path, tmp_path: Path) -> None:
    out = run(
        env,
        "eval",
        "lfw",
        "--images",
        str(lfw_images),
        "--pairs",
        str(LFW / "pairs.tsv"),
        "--limit",
        "15",
        "--out",
        str(tmp_path),
    )
    assert out["pairs"] == 30 and out["same_pairs"] == 15
    for key in ("accuracy", "failed_pairs", "threshold", "fnmr_at_fmr_1e-3", "fnmr_at_fmr_1e-4"):
        assert key in out
    assert out["accuracy"] >= 0.85
    assert (tmp_path / "roc.png").stat().st_size > 1000 and (tmp_path / "det.png").stat().st_size > 1000


def test_collections_lifecycle_and_errors(env: dict[str, str]) -> None:
    created = run(env, "collections", "create", "people", "--shards", "2")
    assert created["shard_count"] == 2 and created["max_false_match_rate"] == 1e-5
    assert "people" in run(env, "collections", "list")["collections"]
    again = runner.invoke(app, ["collections", "create", "people"], env=env)
    assert again.exit_code == 2 and "COLLECTION_EXISTS" in again.output
    bad = runner.invoke(app, ["collections", "create", "../etc"], env=env)
    assert bad.exit_code == 2 and "INVALID_COLLECTION_NAME" in bad.output
    assert run(env, "collections", "delete", "people", "--yes")["deleted_objects"] >= 1
    missing = runner.invoke(app, ["collections", "describe", "people"], env=env)
    assert missing.exit_code == 2 and "COLLECTION_NOT_FOUND" in missing.output


def test_index_search_delete(env: dict[str, str], lfw_images: Path, tmp_path: Path) -> None:
    photos = lfw_photos(lfw_images, people=6, per_person=3)
    for photo in photos:
        target = tmp_path / "src" / photo.parent.name / photo.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(photo.read_bytes())
    (tmp_path / "src" / "notes.txt").write_text("not a photo")
    run(env, "collections", "create", "small", "--max-false-match-rate", "1e-3")
    summary = run(env, "index", "small", str(tmp_path / "src"))
    assert summary["images"] == 19 and summary["errors_by_reason"]["UNSUPPORTED_FORMAT"] == 1
    assert summary["faces"] >= 16
    probe = str(photos[0])
    found = run(env, "search", "small", probe, "--purpose", "system-test", "--case-id", "C-1")
    assert found["matches"][0]["external_image_id"] == f"{photos[0].parent.name}/{photos[0].name}"
    assert found["partial"] is False and found["searched_face"]["bbox"]
    refused = runner.invoke(app, ["search", "small", probe, "--purpose", "curiosity", "--case-id", "C-1"], env=env)
    assert refused.exit_code == 2 and "not allowed" in refused.output
    deleted = run(env, "faces", "delete", "small", "--external-image-id", found["matches"][0]["external_image_id"])
    assert len(deleted["deleted_faces"]) == 1
    listed = run(env, "faces", "list", "small", "--limit", "100")
    assert listed["total"] == summary["faces"] - 1


def test_keys_and_audit_commands(env: dict[str, str], tmp_path: Path) -> None:
    created = run(env, "keys", "create", "--role", "searcher", "--collection", "small", "--label", "analyst")
    assert created["token"].startswith("fgk_") and created["collections"] == ["small"]
    listed = run(env, "keys", "list")["keys"]
    assert any(k["key_id"] == created["key_id"] for k in listed)
    assert all("secret_sha256" not in k and "token" not in k for k in listed)
    assert run(env, "keys", "revoke", created["key_id"])["revoked_at"]
    assert run(env, "audit", "verify")["ok"]
    parquet, csv = tmp_path / "audit.parquet", tmp_path / "audit.csv"
    exported = run(env, "audit", "export", "--from", "2000-01-01", "--to", "2100-01-01", "--out", str(parquet))
    assert exported["records"] >= 2 and parquet.stat().st_size > 0
    assert run(env, "audit", "export", "--out", str(csv))["records"] > exported["records"]  # the export was audited
    assert "key-create" in csv.read_text()
    report = run(env, "audit", "report", "--out", str(tmp_path))
    assert report["key_changes"] >= 2 and report["exports"] >= 1
    assert (tmp_path / "transparency.png").stat().st_size > 1000


def test_eval_moves_no_floor_and_calibrate_moves_exactly_one(
    env: dict[str, str], lfw_images: Path, tmp_path: Path
) -> None:
    import numpy as np

    from cluster.audit.log import read_records
    from cluster.models.calibration import build_calibration
    from cluster.models.recipes import DEFAULT_RECIPE
    from cluster.storage import LocalStore

    for name in ("kept", "moved"):
        run(env, "collections", "create", name, "--shards", "1")
    floors = {n: run(env, "collections", "describe", n)["threshold_floor_similarity"] for n in ("kept", "moved")}
    assert run(env, "collections", "describe", "kept")["calibration"]["pinned"]
    # Another data set (the first 15 pairs of each kind), saved: every floor stays where it was.
    out = run(env, "eval", "lfw", "--images", str(lfw_images), "--pairs", str(LFW / "pairs.tsv"), "--limit", "15",
              "--out", str(tmp_path), "--save-calibration")  # fmt: skip
    saved = json.loads(Path(out["calibration_file"]).read_text())
    assert saved["model_id"] == "sface-2021dec" and saved["pairs_limit"] == 15
    assert {n: run(env, "collections", "describe", n)["threshold_floor_similarity"] for n in floors} == floors
    # Too few impostor comparisons for the floor of 1e-5: refused, nothing moves.
    refused = runner.invoke(
        app, ["collections", "calibrate", "moved", "--calibration", out["calibration_file"]], env=env
    )
    assert refused.exit_code == 2 and "cannot be promised" in " ".join(refused.output.split())
    # A calibration measured on impostors that score higher: applied to one collection, audited with both floors.
    rng = np.random.default_rng(0)
    impostor = np.clip(rng.normal(0.15, 0.1, 12_000_000), -1, 1)
    stricter = {
        "model_id": "sface-2021dec",
        "recipe": DEFAULT_RECIPE,  # what both collections were created with (a calibration applies to its recipe)
        "dataset": "synthetic",
        **build_calibration(rng.normal(0.7, 0.1, 3000), impostor),
    }
    path = tmp_path / "stricter.json"
    path.write_text(json.dumps(stricter))
    change = run(env, "collections", "calibrate", "moved", "--calibration", str(path))
    assert change["old_floor_similarity"] == floors["moved"] and change["new_floor_similarity"] != floors["moved"]
    after = {n: run(env, "collections", "describe", n)["threshold_floor_similarity"] for n in floors}
    assert after == {"kept": floors["kept"], "moved": change["new_floor_similarity"]}
    record = [r for r in read_records(LocalStore(Path(env["FACEGRID_STORE"]))) if r["action"] == "calibrate-collection"]
    assert [(r["collection"], r["outcome"]) for r in record] == [("moved", "refused"), ("moved", "ok")]
    assert record[0]["code"] == "RATE_NOT_SUPPORTED"
    assert record[-1]["old_floor_similarity"] == floors["moved"]
    assert record[-1]["new_floor_similarity"] == change["new_floor_similarity"]
    for name in floors:
        run(env, "collections", "delete", name, "--yes")


def test_users_and_face_search_from_the_command_line(env: dict[str, str], lfw_images: Path) -> None:
    run(env, "collections", "create", "crowd", "--shards", "1")
    photos = lfw_photos(lfw_images, 2, per_person=2)
    ids = [run(env, "faces", "add", "crowd", str(p), "--max-faces", "1")["face_records"][0]["face_id"] for p in photos]
    search = ("--purpose", "system-test", "--case-id", "CLI-USERS")
    similar = run(env, "faces", "search", "crowd", ids[0], *search)
    assert similar["searched_face_id"] == ids[0] and ids[0] not in [m["face_id"] for m in similar["matches"]]
    assert run(env, "users", "create", "crowd", "first")["face_count"] == 0
    assert run(env, "users", "associate", "crowd", "first", *ids[:2])["user_faces"] == 2
    assert run(env, "users", "list", "crowd")["users"][0]["face_ids"] == ids[:2]
    found = run(env, "users", "search", "crowd", "--image", str(photos[1]), *search)["user_matches"]
    assert found[0]["user_id"] == "first"
    assert run(env, "users", "disassociate", "crowd", "first", ids[0])["user_faces"] == 1
    assert run(env, "users", "delete", "crowd", "first", "--erase-faces")["erased_faces"] == [ids[1]]
    run(env, "collections", "delete", "crowd", "--yes")
