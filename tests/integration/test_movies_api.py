"""The catalogue endpoints against a migrated PostgreSQL: search with
filters and paging, one movie with its rating stats, hostile parameters."""

import subprocess
import urllib.parse

import pytest

import harness
from inferfixture import BIN


@pytest.fixture(scope="module")
def api(workdir, backends):
    pg = backends.pg
    subprocess.run([str(BIN), "migrate", "--dsn", pg.conninfo,
                    "--dir", str(harness.ROOT / "sql")],
                   check=True, capture_output=True)
    pg.psql("""
        DELETE FROM ratings WHERE movie_id BETWEEN 900001 AND 900010;
        DELETE FROM movies WHERE movie_id BETWEEN 900001 AND 900010;
        INSERT INTO movies (movie_id, title, year, genres) VALUES
          (900001, 'Heat', 1995, '{Action,Crime,Thriller}'),
          (900002, 'Heathers', 1989, '{Comedy}'),
          (900003, '100% Wolf', 2020, '{Animation,Comedy}'),
          (900004, 'Under_score', 2001, '{Drama}'),
          (900005, 'Amélie', 2001, '{Comedy,Romance}');
        INSERT INTO ratings (user_id, movie_id, rating, ts) VALUES
          (1, 900001, 4.5, now()), (2, 900001, 3.5, now()), (3, 900001, 5.0, now());
    """)
    ngx = harness.Nginx(workdir, pg=pg, redis=backends.redis, name="nginx-movies",
                        workers=1)
    ngx.start()
    try:
        yield ngx
    finally:
        ngx.stop()
    problems = ngx.log_problems()
    assert not problems, "nginx logged alerts:\n" + "\n".join(problems)


def search(api, **params):
    return api.json("GET", "/api/v1/movies?" + urllib.parse.urlencode(params))


def ids(doc):
    return [m["movie_id"] for m in doc["movies"]]


def test_search_by_title_substring_case_insensitive(api):
    status, _, doc = search(api, q="heat")
    assert status == 200
    assert ids(doc) == [900001, 900002] and doc["total"] == 2
    assert doc["movies"][0] == {"movie_id": 900001, "title": "Heat", "year": 1995,
                                "genres": ["Action", "Crime", "Thriller"]}


def test_like_metacharacters_are_literal(api):
    assert ids(search(api, q="100%")[2]) == [900003]
    assert ids(search(api, q="%")[2]) == [900003]
    assert ids(search(api, q="r_s")[2]) == [900004]   # '_' is not a wildcard
    assert search(api, q="\\")[2]["total"] == 0


def test_utf8_query_and_plus_as_space(api):
    assert ids(search(api, q="amélie")[2]) == [900005]
    status, _, doc = api.json("GET", "/api/v1/movies?q=Under+score")
    assert status == 200 and doc["total"] == 0


def test_genre_year_and_paging(api):
    _, _, doc = search(api, genre="Comedy", year_min=1990, year_max=2020)
    assert [m for m in ids(doc) if m > 900000] == [900003, 900005]
    _, _, doc = search(api, q="e", limit=1, offset=1)
    assert doc["limit"] == 1 and doc["offset"] == 1 and len(doc["movies"]) == 1


def test_sql_metacharacters_are_just_text(api):
    status, _, doc = search(api, q="'; DROP TABLE movies; --")
    assert status == 200 and doc["total"] == 0
    assert search(api, q="Heat")[2]["total"] >= 1


@pytest.mark.parametrize("params,field", [
    ({"genre": "Nope"}, "genre"), ({"limit": 0}, "limit"), ({"limit": 101}, "limit"),
    ({"offset": -1}, "offset"), ({"year_min": 1200}, "year_min"),
    ({"limit": "ten"}, "limit"), ({"q": "x" * 201}, "q"),
])
def test_bad_parameters_are_422(api, params, field):
    status, _, doc = search(api, **params)
    assert status == 422
    assert doc["error"]["code"] == "validation_failed"
    assert field in doc["error"]["fields"]


def test_invalid_utf8_and_nul_in_q_are_422(api):
    for raw in ("%ff%fe", "a%00b"):
        status, _, doc = api.json("GET", "/api/v1/movies?q=" + raw)
        assert status == 422 and "q" in doc["error"]["fields"]


def test_one_movie_with_rating_stats(api):
    status, _, doc = api.json("GET", "/api/v1/movies/900001")
    assert status == 200
    assert doc["title"] == "Heat" and doc["rating_count"] == 3
    assert abs(doc["rating_mean"] - 4.333) < 1e-6
    status, _, doc = api.json("GET", "/api/v1/movies/900002")
    assert doc["rating_count"] == 0 and doc["rating_mean"] is None


@pytest.mark.parametrize("mid", ["999999", "0", "abc", "99999999999", "-1"])
def test_unknown_or_bad_movie_id_is_404(api, mid):
    status, _, doc = api.json("GET", "/api/v1/movies/" + mid)
    assert status == 404 and doc["error"]["code"] == "not_found"
