"""Benchmark of the reports' interactive viewer: page size and load time in headless Chromium (not a test).

Two sources of pages:

* ``--output-dir OUT``: the ``group.html`` and the first ``sub-*.html`` a
  finished run wrote (e.g. the README demo's ``demo/out``);
* otherwise a synthetic page at ``--resolution``: the template, AAL3 and
  ``--overlays`` maps of smoothed noise inside the brain (a stand-in for
  group mean maps; real maps compress about as well, see docs/performance.md).

For each page it prints the size (total, the viewer's share, the share of
NiiVue's bundle), and the time from navigation start until the viewer is
ready (every volume decoded and drawn) against the same page with the viewer
removed (the plain way: a static report), in headless Chromium with
SwiftShader (software WebGL, so a lower bound on a desktop GPU's speed). The
page reports its ``performance.now()`` to a local HTTP listener, so no
virtual time is involved; Chromium's CPU time (all its processes) is printed
too, as wall time on a shared machine follows its load. Each page is loaded
``--repeats`` times, median.

Usage::

    python benchmarks/viewer.py --output-dir demo/out
    python benchmarks/viewer.py --resolution 2 --overlays 10
"""

from __future__ import annotations

import argparse
import http.server
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import threading
import urllib.parse
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from adheat_app.report.viewer import Layer, viewer_html
from adheat_app.templates import get_atlas, get_template

FLAGS = ("--headless=new", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
         "--window-size=1300,1000")
#: Put last into ``<body>``: reports ``performance.now()`` once the viewer is ready (or at once without a viewer).
REPORT_READY = """<script>
(function () {
  function report() {
    var root = document.getElementById('adheat-viewer');
    if (root && root.dataset.state === 'loading') { setTimeout(report, 5); return; }
    var state = root ? root.dataset.state : 'none';
    new Image().src = 'http://127.0.0.1:PORT/ready?ms=' + performance.now() + '&state=' + state;
  }
  window.addEventListener('load', report);
})();
</script>"""
VIEWER = re.compile(r'<div id="adheat-viewer".*?</script>\n</div>', re.S)


class _Listener(http.server.BaseHTTPRequestHandler):
    """Records the query of one ``/ready`` request."""

    received: dict = {}
    event = threading.Event()

    def do_GET(self):  # noqa: N802 (http.server's name)
        query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
        _Listener.received = {key: values[0] for key, values in query.items()}
        _Listener.event.set()
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its descendants so far (read from ``/proc``)."""
    stats = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(stat.parent.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))  # ppid, utime + stime
    tree, grew = {pid}, True
    while grew:
        children = {p for p, (ppid, _) in stats.items() if ppid in tree} - tree
        tree, grew = tree | children, bool(children)
    return sum(stats[p][1] for p in tree if p in stats) / os.sysconf("SC_CLK_TCK")


def load_time(exe: str, html: str, folder: Path, port: int) -> tuple[float, float, str]:
    """Milliseconds from navigation start until the page reported ready, Chromium's CPU seconds until then (every
    process, from its start), and the viewer's state."""
    end = html.rindex("</body>")
    page = folder / "page.html"
    page.write_text(html[:end] + REPORT_READY.replace("PORT", str(port)) + html[end:])
    profile = Path(tempfile.mkdtemp(dir=folder))
    _Listener.event.clear()
    proc = subprocess.Popen([exe, *FLAGS, f"--user-data-dir={profile}", page.as_uri()], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        if not _Listener.event.wait(300):
            raise RuntimeError(f"{page}: no ready report within 300 s")
        cpu = tree_cpu_seconds(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(profile, ignore_errors=True)
    return float(_Listener.received["ms"]), cpu, _Listener.received["state"]


def synthetic_page(resolution: float, overlays: int) -> str:
    """A page with only the viewer: template, AAL3 and ``overlays`` smoothed-noise maps."""
    template = get_template(resolution)
    atlas = get_atlas(resolution, template.space)
    brain = template.mask_array()
    rng = np.random.default_rng(0)
    layers = []
    for k in range(overlays):
        noise = ndimage.gaussian_filter(rng.standard_normal(template.shape), 4.0 / resolution)
        layers.append(Layer(f"map {k}", nib.Nifti1Image(np.where(brain, np.abs(noise), 0).astype(np.float32),
                                                         template.affine), threshold=float(np.abs(noise).std())))
    fragment = viewer_html([Layer("template", template.t1w)], layers, atlas)
    return f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"></head><body>{fragment}</body></html>'


def measure(exe: str, name: str, html: str, repeats: int, folder: Path, port: int) -> None:
    """Print size and median load time of a page with and without its viewer."""
    viewer = VIEWER.search(html)
    bundle = len((Path(__file__).resolve().parents[1] / "adheat_app" / "report" / "static" /
                  "niivue.umd.js").read_bytes())
    size, viewer_size = len(html.encode()), len(viewer.group(0).encode()) if viewer else 0
    plain_html = VIEWER.sub("", html)
    runs, plain = [], []
    for _ in range(repeats):
        ms, cpu, state = load_time(exe, html, folder, port)
        if state != "ready":
            raise RuntimeError(f"{name}: viewer state {state}")
        runs.append((ms / 1e3, cpu))
        ms, cpu, _ = load_time(exe, plain_html, folder, port)
        plain.append((ms / 1e3, cpu))
    (wall, cpu), (plain_wall, plain_cpu) = [[statistics.median(v) for v in zip(*r)] for r in (runs, plain)]
    print(f"{name}: {size / 1e6:.2f} MB (viewer {viewer_size / 1e6:.2f} MB: NiiVue {bundle / 1e6:.2f} MB, volumes and "
          f"script {(viewer_size - bundle) / 1e6:.2f} MB); ready after {wall:.2f} s wall, Chromium CPU {cpu:.1f} s; "
          f"without the viewer {plain_wall:.2f} s wall, CPU {plain_cpu:.1f} s (ratios {wall / plain_wall:.1f}x, "
          f"{cpu / plain_cpu:.1f}x; median of {repeats}; load average {os.getloadavg()[0]:.1f})")


def main(argv: list[str] | None = None) -> int:
    """Print page sizes and load times."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", type=Path, help="a finished run's output folder (group.html, sub-*.html)")
    parser.add_argument("--resolution", type=float, default=4.0, help="synthetic page's grid (mm)")
    parser.add_argument("--overlays", type=int, default=10, help="synthetic page's overlays")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    exe = shutil.which("chromium") or shutil.which("google-chrome")
    if exe is None:
        parser.error("needs Chromium (apt-get install chromium)")
    if args.output_dir:
        pages = {path.name: path.read_text() for path in [args.output_dir / "group.html",
                                                          *sorted(args.output_dir.glob("sub-*.html"))[:1]]}
    else:
        pages = {f"synthetic, {args.resolution:g} mm, {args.overlays} overlays":
                 synthetic_page(args.resolution, args.overlays)}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Listener)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name, html in pages.items():
                measure(exe, name, html, args.repeats, Path(tmp), server.server_address[1])
    finally:
        server.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
