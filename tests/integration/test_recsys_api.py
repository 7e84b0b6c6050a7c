"""Recommendation endpoints through nginx → shm → cinematch infer, with a
small synthetic catalogue and a freshly trained ALS artifact."""

import json
import subprocess

import pytest

import harness
from inferfixture import BIN, Infer
from tokens import access_token, authenticate, new_secret


@pytest.fixture(scope="module")
def api(workdir, backends):
    data = workdir / "rs-data"
    subprocess.run([str(BIN), "synth", "--out", str(data), "--users", "120",
                    "--items", "400", "--ratings", "6000", "--seed", "3"],
                   check=True, capture_output=True)
    artifact = workdir / "rs-model.cmrs"
    subprocess.run([str(BIN), "train", "recsys", "--data", str(data), "--out",
                    str(artifact), "--factors", "8", "--iters", "5"],
                   check=True, capture_output=True)
    infer = Infer(workdir, name="infer-rs", extra=[
        "--recsys", str(artifact), "--movies", str(data / "movies.csv"),
        "--recsys-version", "1"])
    infer.start()
    # /recommend needs a caller; an admin may name any user_id (no users
    # table is needed: the token is verified without the database)
    secret = workdir / "rs-jwt.secret"
    token = access_token(new_secret(BIN, secret), role="admin")
    ngx = harness.Nginx(workdir, pg=backends.pg, redis=backends.redis,
                        http_extra=infer.directive
                        + f"\ncinematch_jwt_secret_file {secret};",
                        name="nginx-rs", workers=2)
    authenticate(ngx, token)
    ngx.start()
    harness.wait_for(lambda: ngx.json("GET", "/ready")[0] == 200, timeout=10,
                     what="ready with the model")
    try:
        yield ngx
    finally:
        ngx.stop()
        infer.stop()
    problems = ngx.log_problems()
    assert not problems, "nginx logged alerts:\n" + "\n".join(problems)


def test_ready_lists_the_recsys_model(api):
    _, _, doc = api.json("GET", "/ready")
    models = doc["checks"]["inference"]["models"]
    assert [(m["name"], m["version"]) for m in models] == [("recsys", "1")]
    assert len(models[0]["sha256"]) == 64


def test_recommend_for_a_dataset_user(api):
    status, _, doc = api.json("POST", "/api/v1/recommend", {"user_id": 5, "k": 7})
    assert status == 200
    assert doc["user_id"] == 5 and doc["model_version"] == "1"
    assert doc["is_fallback"] is False and doc["fallback_reason"] is None
    recs = doc["recommendations"]
    assert len(recs) == 7
    assert all({"movie_id", "title", "year", "genres", "score"} <= set(r) for r in recs)
    scores = [r["score"] for r in recs]
    assert scores == sorted(scores, reverse=True)
    assert any("because" in r for r in recs)


def test_recommend_filters(api):
    status, _, doc = api.json("POST", "/api/v1/recommend", {
        "user_id": 9, "k": 10,
        "filters": {"genres": ["Comedy"], "year_min": 1990, "year_max": 2010}})
    assert status == 200
    for r in doc["recommendations"]:
        assert "Comedy" in r["genres"] and 1990 <= r["year"] <= 2010


def test_recommend_unknown_user_is_popular_fallback(api):
    status, _, doc = api.json("POST", "/api/v1/recommend", {"user_id": 999999})
    assert status == 200
    assert doc["is_fallback"] is True
    assert doc["fallback_reason"] == "unknown_user"
    assert len(doc["recommendations"]) == 10


@pytest.mark.parametrize("body,field", [
    ({"user_id": 5, "k": 0}, "k"),
    ({"user_id": 5, "k": 101}, "k"),
    ({"user_id": 5, "k": "10"}, "k"),
    ({"user_id": -1}, "user_id"),
    ({"user_id": 5, "exclude_seen": "yes"}, "exclude_seen"),
    ({"user_id": 5, "filters": {"genres": ["Nope"]}}, "filters.genres"),
    ({"user_id": 5, "filters": {"genres": "Comedy"}}, "filters.genres"),
    ({"user_id": 5, "filters": {"year_min": 2000, "year_max": 1990}}, "filters.year_min"),
    ({"user_id": 5, "filters": {"year_min": 99999}}, "filters"),
    ({"user_id": 5, "surprise": 1}, "surprise"),
])
def test_recommend_rejects_bad_fields_with_422(api, body, field):
    status, _, doc = api.json("POST", "/api/v1/recommend", body)
    assert status == 422, doc
    assert doc["error"]["code"] == "validation_failed"
    assert field in doc["error"]["fields"]
    assert doc["error"]["request_id"]


@pytest.mark.parametrize("raw", [b'{"user_id": 5,', b'[1, 2, 3]', b'"x"',
                                 b'{"user_id": 5, "user_id": 6}',
                                 b'{"a":' * 5000 + b'1' + b'}' * 5000])
def test_recommend_malformed_json_is_400(api, raw):
    status, _, doc = api.json("POST", "/api/v1/recommend", raw,
                              headers={"Content-Type": "application/json"})
    assert status in (400, 413), doc
    assert doc["error"]["code"] in ("invalid_request", "payload_too_large")


def test_similar_and_unknown_movie(api):
    status, _, doc = api.json("POST", "/api/v1/similar", {"movie_id": 1, "k": 5})
    assert status == 200
    assert doc["movie_id"] == 1 and doc["model_version"] == "1"
    assert len(doc["similar_items"]) == 5
    assert all(s["movie_id"] != 1 for s in doc["similar_items"])
    status, _, doc = api.json("POST", "/api/v1/similar", {"movie_id": 987654})
    assert status == 404 and doc["error"]["code"] == "not_found"
    status, _, doc = api.json("POST", "/api/v1/similar", {"k": 5})
    assert status == 422 and "movie_id" in doc["error"]["fields"]


def test_popular_with_and_without_genre(api):
    status, _, doc = api.json("GET", "/api/v1/popular?k=5")
    assert status == 200 and doc["source"] == "popularity"
    pops = [r["popularity_score"] for r in doc["recommendations"]]
    assert len(pops) == 5 and pops == sorted(pops, reverse=True)
    status, _, doc = api.json("GET", "/api/v1/popular?k=3&genre=Sci-Fi")
    assert status == 200 and doc["source"] == "genre_popularity"
    status, _, doc = api.json("GET", "/api/v1/popular?genre=Nope")
    assert status == 422
    status, _, doc = api.json("GET", "/api/v1/popular?k=1000")
    assert status == 422


def test_predict(api):
    status, _, doc = api.json("POST", "/api/v1/predict/recsys",
                              {"user_id": 5, "movie_ids": [1, 2, 999999]})
    assert status == 200
    preds = doc["predictions"]
    assert [p["movie_id"] for p in preds] == [1, 2, 999999]
    assert 0.5 <= preds[0]["rating"] <= 5.0 and preds[2]["rating"] is None
    status, _, doc = api.json("POST", "/api/v1/predict/other", {"user_id": 5, "movie_ids": [1]})
    assert status == 404
    status, _, doc = api.json("POST", "/api/v1/predict/recsys",
                              {"user_id": 5, "movie_ids": list(range(1, 1002))})
    assert status == 422


def test_predict_needs_credentials(api):
    status, _, body = api.unauthenticated(
        "POST", "/api/v1/predict/recsys", b'{"user_id": 5, "movie_ids": [1]}',
        {"Content-Type": "application/json"})
    assert status == 401, body


def test_wrong_method_is_405_with_allow(api):
    status, hdrs, doc = api.json("GET", "/api/v1/recommend")
    assert status == 405 and "POST" in hdrs["allow"]
