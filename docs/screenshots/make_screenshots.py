"""Screenshots of the two views of an experiment, as a person sees them in headless Chromium.

    gce-search run quickstart --storage /tmp/shots --name quickstart --set search.num_samples=16 \\
        --set train.epochs=3 --set scheduler.grace_period=1 --set data.max_train=600
    python docs/screenshots/make_screenshots.py /tmp/shots/quickstart            # writes docs/screenshots/*.png

Starts `gce-search tensorboard EXP` and `gce-search dashboard EXP` on free ports of 127.0.0.1 and saves:
hparams_table.png, hparams_parallel_coordinates.png (the default columns: the complete GCE trials),
hparams_parallel_coordinates_every_trial.png (λ, test metrics and rank unticked), pareto_series.png (the Images tab, the Pareto figure's
slider at the last step), reliability.png, dashboard_front.png (optuna-dashboard's accuracy-vs-ECE front) and
dashboard_trials.png (a trial with its user attributes). Needs /usr/bin/chromium, /usr/bin/chromedriver and
selenium (the test extra).
"""
from __future__ import annotations

import argparse
import contextlib
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.search.browser import chromium, wait_for_js  # noqa: E402  (the browser the tests use)

OUT = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(command: str, exp: Path, ready_path: str):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gce_search", command, str(exp), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"gce-search {command} {exp} exited with {proc.returncode}")
            try:
                urllib.request.urlopen(base + ready_path, timeout=10).read()
                break
            except OSError:
                if time.time() > deadline:
                    raise SystemExit(f"gce-search {command} did not answer within 120 s") from None
                time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def click_tab(driver, label: str) -> None:
    wait_for_js(driver, f"""
        const tab = find(document, el => el.tagName === 'PAPER-TAB'
                                         && el.textContent.trim().toUpperCase().startsWith({label.upper()!r}));
        if (tab) tab.click();
        return !!tab;""", what=f"the {label} tab")


def set_checkbox(driver, label: str, checked: bool) -> None:
    wait_for_js(driver, f"""
        const box = find(document, el => el.tagName === 'PAPER-CHECKBOX' && el.textContent.trim() === {label!r});
        if (box && !!box.checked !== {str(checked).lower()}) box.click();
        return !!box;""", what=f"the {label} checkbox")


def settle(driver, seconds: float = 2.0) -> None:
    # Charts animate in after their data arrives; nothing in the DOM says when a transition has finished.
    time.sleep(seconds)


def wait_until_loaded(base: str, exp: Path, timeout: float = 120.0) -> None:
    """TensorBoard answers before it has read the event files: wait until every run is listed."""
    import json

    expected = {p.name for p in (exp / "tensorboard").iterdir() if p.is_dir()}
    deadline = time.time() + timeout
    while time.time() < deadline:
        if expected <= set(json.loads(urllib.request.urlopen(f"{base}/data/runs").read())):
            return
        time.sleep(0.5)
    raise SystemExit(f"TensorBoard did not load every run of {exp} within {timeout} s")


def tensorboard_shots(driver, base: str) -> None:
    driver.get(f"{base}/#hparams")
    wait_for_js(driver, "return find(document, el => el.tagName === 'TF-HPARAMS-TABLE-VIEW');", what="HParams")
    settle(driver)
    driver.save_screenshot(str(OUT / "hparams_table.png"))
    click_tab(driver, "parallel")
    wait_for_js(driver, """
        const plot = find(document, el => el.tagName === 'TF-HPARAMS-PARALLEL-COORDS-PLOT');
        return plot && (plot.shadowRoot || plot).querySelectorAll('g.foreground path').length;""",
                what="parallel-coordinates lines")
    settle(driver)
    driver.save_screenshot(str(OUT / "hparams_parallel_coordinates.png"))
    # A line needs a value in every shown column: without λ, the test metrics and the rank, every trial has one.
    for label in ("gce.lam", "test/acc", "test/ece", "pareto/rank"):
        set_checkbox(driver, label, False)
    settle(driver)
    driver.save_screenshot(str(OUT / "hparams_parallel_coordinates_every_trial.png"))

    driver.get(f"{base}/#images&tagFilter=pareto")
    wait_for_js(driver, "return find(document, el => el.tagName === 'IMG' && el.naturalWidth > 0);",
                what="the Pareto image")
    set_checkbox(driver, "Show actual image size", True)  # the Images tab shows thumbnails otherwise
    settle(driver)
    driver.save_screenshot(str(OUT / "pareto_series.png"))
    driver.get(f"{base}/#images&tagFilter=reliability%2Ffront")
    wait_for_js(driver, "return find(document, el => el.tagName === 'IMG' && el.naturalWidth > 0);",
                what="a reliability diagram")
    set_checkbox(driver, "Show actual image size", True)
    settle(driver)
    driver.save_screenshot(str(OUT / "reliability.png"))


def dashboard_shots(driver, base: str) -> None:
    import json

    study_id = json.loads(urllib.request.urlopen(f"{base}/api/studies").read())["study_summaries"][0]["study_id"]
    driver.get(f"{base}/dashboard/studies/{study_id}")
    wait_for_js(driver, "return document.querySelectorAll('.js-plotly-plot').length >= 1;", what="the plots")
    settle(driver, 3.0)
    driver.save_screenshot(str(OUT / "dashboard_front.png"))
    driver.get(f"{base}/dashboard/studies/{study_id}/trials")
    wait_for_js(driver, "return document.body.innerText.includes('calibration.breakpoints');",
                what="a trial's user attributes")
    driver.execute_script("""
        const label = [...document.querySelectorAll('*')].find(el => el.textContent.trim() === 'User Attributes');
        if (label) label.scrollIntoView();""")
    settle(driver)
    driver.save_screenshot(str(OUT / "dashboard_trials.png"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment_dir", type=Path)
    args = parser.parse_args()
    with chromium(width=1500, height=1150) as driver:
        with serve("tensorboard", args.experiment_dir, "/data/runs") as base:
            wait_until_loaded(base, args.experiment_dir)
            tensorboard_shots(driver, base)
        with serve("dashboard", args.experiment_dir, "/api/studies") as base:
            dashboard_shots(driver, base)
    print("\n".join(str(p) for p in sorted(OUT.glob("*.png"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
