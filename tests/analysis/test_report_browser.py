"""The report opens in a real browser: headless Chromium loads every image and logs no
console error.

A copy of ``report.html`` gets a probe script at the top of ``<head>``: it records script
errors, failed resources and ``console.error`` calls, and on ``load`` writes the state of every
``<img>`` into the page as JSON, which ``--dump-dom`` prints. Chromium's own log
(``--enable-logging=stderr``) is searched for console messages as well; the report has no
scripts of its own, so any console message is a failure.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import compose_cfg
from test_latent_analysis import train_tiny_run

from weightspace.analysis import analyze, compose_config
from weightspace.zoo.generate import generate

CHROMIUM = Path("/usr/bin/chromium")

PROBE = """<script>
window.__errors = [];
window.addEventListener("error", function (e) {
  var t = e.target;
  window.__errors.push(t && t.tagName ? "failed to load " + t.tagName : String(e.message));
}, true);
var __consoleError = console.error;
console.error = function () {
  window.__errors.push(Array.prototype.join.call(arguments, " "));
  __consoleError.apply(console, arguments);
};
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var result = {
    n: imgs.length,
    broken: imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                .map(function (i) { return i.alt; }),
    errors: window.__errors
  };
  var pre = document.createElement("pre");
  pre.id = "__probe";
  pre.textContent = JSON.stringify(result);
  document.body.appendChild(pre);
});
</script>"""


def open_headless(page: Path, profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=10000",  # let the load event and the probe run
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )


def assert_loads_cleanly(html: str, tmp_path: Path) -> None:
    """Open ``html`` (with the probe) in headless Chromium: every image loads, no errors."""
    n_images = html.count("<img ")
    probed = tmp_path / "probed.html"
    assert html.count("<head>") == 1
    probed.write_text(html.replace("<head>", "<head>\n" + PROBE, 1))
    run = open_headless(probed, tmp_path / "chromium-profile")
    assert run.returncode == 0, run.stderr[-2000:]
    found = re.search(r'<pre id="__probe">(.*?)</pre>', run.stdout, re.S)
    assert found, "the probe did not run: " + run.stdout[-500:]
    state = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert state["n"] == n_images
    assert state["broken"] == [], "images that did not load"
    assert state["errors"] == [], "errors in the page"
    console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], "console messages"


def needs_chromium() -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not installed (Debian: apt-get install chromium)")


@pytest.mark.slow
def test_report_loads_every_image_without_console_errors(api_zoo_path, tmp_path):
    needs_chromium()
    constant = generate(
        compose_cfg(tmp_path, "zoo.name=constant", "zoo.size=4", "zoo.hparams.init=constant")
    ).path
    cfg = compose_config(
        f"paths.root_dir={tmp_path}",
        f"zoo={api_zoo_path}",
        f"compare_zoo={constant}",
        "runs_differ.n_members=4",
        "runs_differ.n_interp_pairs=2",
        "runs_differ.n_interp_points=5",
    )
    result = analyze(cfg)
    html = result["report"].read_text()
    assert html.count("<img ") == len(result["pngs"]) >= 10
    assert_loads_cleanly(html, tmp_path)


@pytest.mark.slow
def test_report_with_the_latent_section_loads_cleanly(api_zoo_path, tmp_path):
    """Section 5 adds its maps and its probe tables; the page still loads cleanly."""
    needs_chromium()
    zoo = tmp_path / "zoos" / "api"
    shutil.copytree(api_zoo_path, zoo)
    run_dir = train_tiny_run(tmp_path, zoo)
    cfg = compose_config(
        f"paths.root_dir={tmp_path}",
        f"autoencoder={run_dir}",
        "sections=[patterns,latent]",
        "latent.umap=false",
    )
    result = analyze(cfg)
    assert {"latent_map_pca", "latent_trajectories"} <= set(result["pngs"])
    html = result["report"].read_text()
    assert html.count("<img ") == len(result["pngs"]) and "latent linear" in html
    assert_loads_cleanly(html, tmp_path)
