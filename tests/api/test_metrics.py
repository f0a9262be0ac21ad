"""Issue 10: GET /metrics in the Prometheus text format, counters moving with the traffic."""

from __future__ import annotations

import re

import httpx

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEXAMPLEONLYFORTESTS test@ims"


def sample(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(?:{{(.*)}})? (\S+)$", line)
        if not match:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(found.get(key) == value for key, value in labels.items()):
            total += float(match.group(2))
    return total


def scrape(api: httpx.Client) -> str:
    response = api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def test_metrics_move(api: httpx.Client) -> None:
    before = scrape(api)
    for _ in range(5):
        assert api.get("/v3/public-keys").status_code == 200
    assert api.get("/v3/images/not-there").status_code == 404
    assert api.post("/v3/public-keys", json={"name": "m", "public_key": KEY}).status_code == 201
    # Several server processes may answer: counters are summed over all of them.
    after = scrape(api)
    route = {"method": "GET", "route": "/v3/public-keys", "status": "200"}
    assert sample(after, "ims_http_requests_total", **route) >= sample(before, "ims_http_requests_total", **route) + 5
    missing = {"route": "/v3/images/{record_id}", "status": "404"}
    assert sample(after, "ims_http_requests_total", **missing) > sample(before, "ims_http_requests_total", **missing)
    post = {"method": "POST", "route": "/v3/public-keys", "status": "201"}
    assert sample(after, "ims_http_requests_total", **post) > sample(before, "ims_http_requests_total", **post)
    count = "ims_http_request_duration_seconds_count"
    assert sample(after, count, route="/v3/public-keys") > sample(before, count, route="/v3/public-keys")
    assert "ims_http_request_duration_seconds_bucket" in after
    # Queue and jobs come from the database.
    for name in ("ims_tasks_unfinished", "ims_task_oldest_age_seconds"):
        assert re.search(rf"^{name} \S+$", after, re.MULTILINE), name
    assert 'ims_jobs{status="success"}' in after
    # The POST was in a commit (the shared server runs on SQLite, whose group commit counts both).
    commits = sample(after, "ims_db_commits_total") - sample(before, "ims_db_commits_total")
    writes = sample(after, "ims_db_committed_writes_total") - sample(before, "ims_db_committed_writes_total")
    assert 1 <= commits <= writes
    # Raw ids never become labels.
    assert "not-there" not in after
