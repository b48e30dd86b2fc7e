"""`flowctl ui` is safe to leave running: names never leave the checkpoint root, nothing is
written, requests from other sites' pages are refused, the page loads nothing from elsewhere,
and the runs table never imports torch."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import helpers
from tests.support.fake_runs import write_metrics, write_run
from tests.support.helpers import get_json, http_get, serve_root


@pytest.fixture
def served(isolated_run_root: Path):
    """A server over the test's checkpoint root; yields its base URL."""
    with serve_root(isolated_run_root) as url:
        yield url


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime_ns)} of everything under root, symlinks not followed."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            stat = path.lstat()
            found[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns)
    return found


ESCAPES = [
    "/api/runs/..", "/api/runs/../../etc/passwd", "/api/runs/%2e%2e", "/api/runs/..%2F..%2Fetc",
    "/api/runs/%2Fetc", "/api/runs/%2Fetc/status", "/api/runs/.hidden", "/api/runs/escape",
    "/api/runs/escape/status", "/api/runs/escape/metrics", "/api/runs/run/files/..%2Foutside.png",
    "/api/runs/run/files/leak.png", "/api/runs/run/files/run.json", "/api/runs/run/files/%2Fetc%2Fpasswd",
    "/api/runs/%00/status", "/runs/..", "/runs/%2Fetc", "/static/..%2Fapi.py", "/static/../api.py",
    "/api/runs/run/status/extra", "/nope",
]


def test_names_that_leave_the_root_are_404(served: str, isolated_run_root: Path, tmp_path: Path):
    outside = tmp_path / "outside"
    write_run(outside.parent, "outside")
    (outside / "secret.png").write_bytes(b"\x89PNG secret")
    write_run(isolated_run_root, "run")
    write_run(isolated_run_root, ".hidden")
    (isolated_run_root / "escape").symlink_to(outside, target_is_directory=True)
    (isolated_run_root / "run" / "leak.png").symlink_to(outside / "secret.png")
    (isolated_run_root / "alias").symlink_to(isolated_run_root / "run", target_is_directory=True)
    for path in ESCAPES:
        status, _, body = http_get(served + path)
        assert status == 404, f"expected 404 for {path}, got {status}: {body[:200]!r}"
        assert b"secret" not in body
    listing = get_json(f"{served}/api/runs")
    assert sorted(row["folder"] for row in listing["runs"]) == ["alias", "run"]
    assert listing["hidden"] == [{"folder": "escape",
                                  "reason": "a symlink to a folder outside the checkpoint root"}]
    assert get_json(f"{served}/api/runs/alias/status")["status"] == "finished"  # inside: fine


def test_read_only_and_guarded(served: str, isolated_run_root: Path):
    write_run(isolated_run_root, "run")
    write_metrics(isolated_run_root / "run", ["9,0,0,,,,2.0,2.0,0.1"])
    before = snapshot(isolated_run_root)
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, headers, _ = http_get(f"{served}/api/runs/run", method=method)
        assert status == 405 and headers["Allow"] == "GET, HEAD"
    for path in ("/", "/runs/run", "/api/runs", "/api/runs/run", "/api/runs/run/metrics",
                 "/api/runs/run/status"):
        assert http_get(served + path)[0] == 200
        assert http_get(served + path, method="HEAD")[0] == 200
    assert snapshot(isolated_run_root) == before
    status, _, body = http_get(f"{served}/api/runs", headers={"Host": "attacker.example:80"})
    assert status == 403 and b"Host" in body  # DNS rebinding: another site's name
    assert http_get(f"{served}/api/runs", headers={"Host": "localhost"})[0] == 200


def test_pages_ship_everything_they_load(served: str):
    status, headers, html = http_get(f"{served}/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert "https:" not in headers["Content-Security-Policy"]
    local = re.findall(rb'(?:src|href)="([^"]+)"', html)
    assert b"/static/app.js" in local and b"/static/style.css" in local
    scripts = [b"/static/app.js"]
    for reference in local:
        assert reference.startswith((b"/", b"data:")), f"page loads {reference!r} from elsewhere"
    seen = set()
    while scripts:  # follow the module imports: all local, all served
        path = scripts.pop()
        if path in seen:
            continue
        seen.add(path)
        status, headers, body = http_get(served + path.decode())
        assert status == 200 and headers["Content-Type"].startswith("text/javascript"), path
        for target in re.findall(rb'from "([^"]+)"', body):
            assert target.startswith(b"./"), f"{path!r} imports {target!r} from elsewhere"
            scripts.append(b"/static/" + target[2:])
    assert len(seen) >= 4
    static_dir = helpers.REPO_ROOT / "study" / "ui" / "static"
    for file in static_dir.iterdir():
        assert not re.search(rb"https?://(?!www\.w3\.org/2000/svg)", file.read_bytes()), file.name


def test_the_table_never_imports_torch(isolated_run_root: Path):
    write_run(isolated_run_root, "run")
    write_metrics(isolated_run_root / "run", ["9,0,0,,,,2.0,2.0,0.1"])
    code = (
        "import sys, threading, urllib.request\n"
        "from study.ui.api import DashboardApi\n"
        "from study.ui.server import DashboardServer\n"
        f"server = DashboardServer(DashboardApi({str(isolated_run_root)!r}), '127.0.0.1', 0)\n"
        "threading.Thread(target=server.serve_forever, daemon=True).start()\n"
        "for path in ('/', '/static/app.js', '/api/runs', '/api/runs/run/status',\n"
        "             '/api/runs/run/metrics?since=0', '/api/runs/run?checkpoint=0', '/runs/run'):\n"
        "    urllib.request.urlopen(f'http://127.0.0.1:{server.port}{path}').read()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'wandb')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=helpers.REPO_ROOT, capture_output=True,
                            text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"
