"""The HTML report in a real browser (headless Chromium): every plot drawn, no JavaScript error, a
screenshot that is a real picture. Built from hand-made trial records: no sweep needed."""
import html
import json
import re
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from dashboards import report
from tests.dashboards.test_dashboards import RECORDS, E, F

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="headless browser test: /usr/bin/chromium is not "
                                "installed (apt-get install -y chromium; `make test` and .ci/run install it)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--virtual-time-budget=10000"]

# Runs before plotly.js: every uncaught error, rejected promise and console.error lands in
# <pre id="js-errors"> as a JSON list, which --dump-dom shows after the scripts ran.
CAPTURE = """<script>
window.__errors = [];
function __show() {
  if (!document.body) return;
  var el = document.getElementById("js-errors");
  if (!el) { el = document.createElement("pre"); el.id = "js-errors"; document.body.appendChild(el); }
  el.textContent = JSON.stringify(window.__errors);
}
function __keep(text) { window.__errors.push(String(text)); __show(); }
window.addEventListener("error", function (e) { __keep("error: " + e.message); });
window.addEventListener("unhandledrejection", function (e) { __keep("rejected: " + e.reason); });
var __consoleError = console.error;
console.error = function () {
  __keep("console.error: " + Array.from(arguments).join(" "));
  __consoleError.apply(console, arguments);
};
document.addEventListener("DOMContentLoaded", __show);
</script>"""


def _page(tmp_path: Path, records, name: str) -> Path:
    page = report.build_report(records, title=f"browser test: {name}", subtitle="hand-made trial records")
    path = tmp_path / f"{name}.html"
    path.write_text(page.replace("<head>", "<head>" + CAPTURE, 1), encoding="utf-8")
    return path


def _chromium(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(CHROMIUM), *FLAGS, *args], capture_output=True, text=True, timeout=timeout)


def _figure_dom(dom: str, name: str) -> str:
    """The dumped DOM of one figure: from its div to the end of its section."""
    start = dom.index(f'id="fig-{name}"')
    return dom[start:dom.index("</section>", start)]


@pytest.mark.parametrize("records,traces", [
    (RECORDS, {"pareto": 5, "retention": 3, "sensitivity": 7, "progress": 9}),
    ([E, F], {"pareto": 0, "retention": 0, "sensitivity": 6, "progress": 4}),
], ids=["sweep", "unfinished"])
def test_every_plot_is_drawn_without_errors(tmp_path, records, traces):
    page = _page(tmp_path, records, "report")
    run = _chromium("--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri())
    assert run.returncode == 0, run.stderr[-3000:]
    dom = run.stdout
    errors = re.search(r'<pre id="js-errors">(.*?)</pre>', dom, re.S)
    assert errors, "the error-capturing script did not run"
    assert json.loads(html.unescape(errors.group(1))) == []
    console = [line for line in run.stderr.splitlines() if "CONSOLE" in line
               and ("Uncaught" in line or "Error" in line)]
    assert not console, "\n".join(console)
    for name, n in traces.items():
        fig = _figure_dom(dom, name)
        assert fig.count('class="main-svg"') >= 2, f"{name}: plotly drew nothing"
        assert len(re.findall(r'class="trace scatter', fig)) == n, f"{name}: not every trace was drawn"
        assert "<path" in fig
        if n == 0:
            assert "no finished trial yet" in fig                      # the empty figure says why
    assert ('id="no-finished-trial"' in dom) == (records is not RECORDS)


def test_screenshot(tmp_path):
    page = _page(tmp_path, RECORDS, "report")
    shot = tmp_path / "report.png"
    run = _chromium(f"--screenshot={shot}", "--window-size=1400,3000", page.as_uri())
    assert run.returncode == 0 and shot.is_file(), run.stderr[-3000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000
    with Image.open(shot) as im:
        assert im.size == (1400, 3000)
        colours = im.convert("RGB").resize((350, 750)).getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) > 50                    # text, lines and markers, not a blank page
