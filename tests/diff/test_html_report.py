"""compare's HTML report: its sections, the first divergence highlighted, the pairs table, both
runs' metadata side by side, self-containment, a capped table for 100k pairs, and the page as
headless Chromium draws it."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

import accdump
from accdump.diff import compare
from accdump.diff.comparison import CompareResult, Divergence, Pair
from accdump.diff.html_report import MAX_ROWS
from accdump.diff.metrics import PairMetrics, Verdict
from accdump.diff.report import write_html
from accdump.ops import TensorStats
from accdump.store import Record, Role

from ._tiny import golden_model, prompt, target_copy

CHROMIUM = shutil.which("chromium") or shutil.which("/usr/bin/chromium")
DIV_NAME = "layers.1.attn.o_proj"
RED = np.array([198, 40, 40]) / 255  # #c62828: the diverged banner and the divergence markers


class Page(HTMLParser):
    """What the checks need from a report: ids, sections, images, inputs, the two tables' rows."""

    def __init__(self, text: str):
        super().__init__()
        self.ids: set[str] = set()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.pairs: list[tuple[str, list[str]]] = []  # (class, cells) of the pairs table's body
        self.meta: list[tuple[str, list[str]]] = []
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cls = ""
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if a.get("id"):
            self.ids.add(a["id"] or "")
        if tag == "table":
            self._table = a.get("id") or a.get("class")
        elif tag == "tr" and self._table in ("pairs", "meta"):
            self._row, self._cls = [], a.get("class") or ""
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._cls:  # body rows; header rows have no class
                (self.pairs if self._table == "pairs" else self.meta).append((self._cls, self._row))
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def attrs(self, tag: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag]


def assert_self_contained(text: str) -> None:
    assert "http://" not in text and "https://" not in text
    assert "<script" not in text.lower() and "<link" not in text.lower()
    assert not re.search(r"""(?:src|href)\s*=\s*["'](?!data:)""", text)  # nothing fetched from elsewhere


def record(model, path, ids, mode, meta):
    with torch.no_grad(), accdump.record(model, path, mode=mode, metadata=meta):
        for _ in range(2):  # two steps: one curve each
            model(ids)


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    """Golden and a target with a wrong attention scale in layer 1, in tensor and stats mode, the
    target's user metadata saying another build."""
    root = tmp_path_factory.mktemp("html")
    golden, ids = golden_model(), prompt()
    target = target_copy(golden)
    target.layer_list[1].attn.bug_scale = True
    out = {}
    for mode in ("tensor", "stats"):
        for side, model, build in (("golden", golden, "eager"), ("target", target, "fused-attn")):
            out[side, mode] = root / f"{side}_{mode}"
            record(model, out[side, mode], ids, mode, {"build": build, "seed": 1234})
    return out


@pytest.fixture(scope="module")
def tensor_report(dumps, tmp_path_factory):
    result = compare(dumps["golden", "tensor"], dumps["target", "tensor"], device="cpu")
    path = tmp_path_factory.mktemp("report") / "report.html"
    write_html(result, path)
    return result, path


def test_sections_divergence_table_and_metadata(tensor_report):
    result, path = tensor_report
    text = path.read_text()
    page = Page(text)
    assert {"verdict", "first-divergence-card", "curves", "tokens", "metadata", "all-pairs"} <= page.ids
    assert result.first_divergence is not None and result.first_divergence.pair.target.name == DIV_NAME
    banner = re.search(r'<p class="banner (\w+)" id="verdict">', text)
    assert banner and banner.group(1) == "bad"
    # curves in execution order, by layer, and per token at the divergence: all inline PNGs
    images = [a["src"] or "" for a in page.attrs("img")]
    assert len(images) == 3 and all(s.startswith("data:image/png;base64,") for s in images)
    tokens = text[text.index('id="tokens"') :]
    assert "golden solid and target dashed" in tokens[:2000] and "cannot" not in tokens[:2000]

    # every pair, in execution order, the divergent one marked (colour and words) and only it
    assert len(page.pairs) == len(result.pairs)
    assert [cells[0] for _, cells in page.pairs] == [str(i) for i in range(len(result.pairs))]
    assert [cells[3].removesuffix(" ◀ first divergence") for _, cells in page.pairs] == [
        p.target.name or "<root>" for p in result.pairs
    ]
    marked = [(cls, cells) for cls, cells in page.pairs if "div" in cls.split()]
    assert len(marked) == 1
    cls, cells = marked[0]
    assert cells[3] == f"{DIV_NAME} ◀ first divergence" and cls.split()[0] in ("broken", "catastrophic")
    assert 'id="first-divergence"' in text
    for verdict in {p.verdict.label for p in result.pairs}:
        assert any(c.split()[0] == verdict for c, _ in page.pairs)

    # metadata side by side: what differs is marked, what agrees is not
    meta = {cells[1]: (cls, cells) for cls, cells in page.meta if len(cells) == 4}
    assert meta["user_metadata.build"] == ("differs", ["≠", "user_metadata.build", "eager", "fused-attn"])
    assert meta["user_metadata.seed"][0] == "same"
    for key in ("accdump_version", "torch_version", "device_name", "mode", "world_size", "command_line"):
        assert meta[key][0] == "same" and meta[key][1][2] == meta[key][1][3], key
    assert meta["mode"][1][2] == "tensor"
    assert meta["dtypes of compared records"][1][2].startswith("float32 ×")


def test_self_contained_with_a_filter_box_and_sortable_headers(tensor_report):
    _, path = tensor_report
    text = path.read_text()
    assert_self_contained(text)
    page = Page(text)
    (box,) = [a for a in page.attrs("input") if a.get("id") == "filter"]
    assert box["type"] == "search" and "textContent" in (box["oninput"] or "")
    (head,) = [a for a in page.attrs("thead") if a.get("onclick")]
    assert "sort" in (head["onclick"] or "")


def test_stats_mode_plots_norm_ratio_and_says_why_no_token_values(dumps, tmp_path):
    result = compare(dumps["golden", "stats"], dumps["target", "stats"], device="cpu")
    path = tmp_path / "r.html"
    write_html(result, path)
    text = path.read_text()
    assert_self_contained(text)
    page = Page(text)
    assert "norm ratio (from stats) (top) and std rel diff (from stats)" in text
    assert "The tensors were not stored (statistics only)" in text
    assert len(page.pairs) == len(result.pairs)
    assert sum("div" in cls.split() for cls, _ in page.pairs) == 1
    assert len(page.attrs("img")) == 2  # no per-token figure: the tensors were not stored


def test_golden_vs_golden_is_green_without_divergence_sections(dumps, tmp_path):
    g = dumps["golden", "tensor"]
    result = compare(g, g, device="cpu")
    path = tmp_path / "r.html"
    write_html(result, path)
    text = path.read_text()
    page = Page(text)
    assert '<p class="banner ok" id="verdict">' in text
    assert "first-divergence-card" not in page.ids and "tokens" not in page.ids
    assert not any("div" in cls.split() for cls, _ in page.pairs)
    meta = [cls for cls, cells in page.meta if len(cells) == 4]
    assert meta and all(cls == "same" for cls in meta)


def test_dumps_gone_leave_notes_not_errors(dumps, tmp_path):
    """Shown paths that do not load (an imported source's temporary dump, removed): no metadata and
    no tensor values, each said in a note; the per-token cosine compare measured still shows."""
    copies = {}
    for side in ("golden", "target"):
        copies[side] = tmp_path / side
        shutil.copytree(dumps[side, "tensor"], copies[side])
    result = compare(copies["golden"], copies["target"], device="cpu")
    for p in copies.values():
        shutil.rmtree(p)
    path = tmp_path / "r.html"
    write_html(result, path)
    text = path.read_text()
    assert "The golden&#39;s metadata cannot be read" in text
    assert "The target&#39;s metadata cannot be read" in text
    assert "The stored tensors cannot be read back" in text
    assert len(Page(text).attrs("img")) == 3  # curves, layers and the cosine per token


def synthetic(steps: int = 100, per_step: int = 1000, bad: tuple[int, int] = (3, 500)) -> CompareResult:
    """100k pairs of a bfloat16 run, every 300th record failing from `bad` on, one named like markup."""
    stats = TensorStats(32768, 0, 0, 0, 0, -1.0, 1.0, 0.0, 0.0, 0.5, 1.0, 90.0, 1e-3)
    seg = Path("/nonexistent/rank00000/seg00000.h5")
    pairs = []
    for s in range(steps):
        for i in range(per_step):
            name = f"model.layers.{i // 25}.mlp.experts.{i % 25}" if i else "<script>alert(1)</script>"
            rec = Record(0, s, i, name, 0, Role.OUTPUT, "0", "Linear", "bfloat16", (1, 8, 4096),
                         (32768, 4096, 1), 0, True, "cuda:0", stats, "", seg, -1, 0)  # fmt: skip
            after = (s, i) >= bad
            cos = 0.95 - 1e-4 * i if after else 1 - 1e-6 * (i % 7)
            m = PairMetrics("tensor", cos, math.sqrt(2 - 2 * cos), 1.0, 30.0, 1e-3)
            v = Verdict.BROKEN if after and (i % 300 == 0 or (s, i) == bad) else Verdict(int(after))
            pairs.append(Pair(rec, rec, m, v))
    i = bad[0] * per_step + bad[1]
    d = Divergence(pairs[i], [], pairs[i].target.name, "The output fails.", pairs[i - 1], [0.99, 0.9, 0.97])
    return CompareResult("golden", "target", pairs, [], [], d, None, f"{steps} common steps")


@pytest.fixture(scope="module")
def large_report(tmp_path_factory):
    result = synthetic()
    path = tmp_path_factory.mktemp("large") / "large.html"
    write_html(result, path)
    return result, path


def test_100k_pairs_stay_small_and_keep_the_failing_ones(large_report):
    result, path = large_report
    assert len(result.pairs) == 100_000
    assert path.stat().st_size < 3_000_000
    text = path.read_text()
    assert_self_contained(text)
    page = Page(text)
    assert len(page.pairs) == MAX_ROWS
    shown = {int(cells[0]) for _, cells in page.pairs}
    failing = {i for i, p in enumerate(result.pairs) if p.failing}
    assert failing <= shown
    assert set(range(3490, 3511)) <= shown  # the neighbourhood of the divergence (pair 3500)
    assert f"Showing {MAX_ROWS} of 100000 pairs" in text and "the complete list is in" in text.lower()
    assert sum("div" in cls.split() for cls, _ in page.pairs) == 1
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "12 of 100 steps shown" in text


def screenshot(html: Path, out: Path) -> np.ndarray:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed")
    from matplotlib.image import imread

    proc = subprocess.run(
        [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--hide-scrollbars", f"--screenshot={out}", "--window-size=1400,2400", html.resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.exists() and out.stat().st_size > 20_000
    img = imread(out)[..., :3]
    assert img.shape[:2] == (2400, 1400)
    return img


def red_pixels(img: np.ndarray) -> int:
    return int((np.abs(img - RED).max(axis=-1) < 0.08).sum())


@pytest.mark.parametrize("which", ["tensor", "large"])
def test_chromium_draws_the_page(tensor_report, large_report, tmp_path, which):
    _, path = tensor_report if which == "tensor" else large_report
    img = screenshot(path, tmp_path / "shot.png")
    assert img.std() > 0.05  # not a blank page
    assert len(np.unique((img * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 200  # text, plots
    assert red_pixels(img) > 20_000  # the diverged banner and the divergence markers


def test_chromium_draws_a_passing_page_without_red(dumps, tmp_path):
    g = dumps["golden", "tensor"]
    path = tmp_path / "ok.html"
    write_html(compare(g, g, device="cpu"), path)
    img = screenshot(path, tmp_path / "shot.png")
    assert img.std() > 0.05
    assert red_pixels(img) < 500
