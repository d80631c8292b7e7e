"""The training-loss plot: train (EMA-smoothed, braille line) and validation (markers) over steps."""
from __future__ import annotations

import math
from collections.abc import Sequence

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

# braille dot bits by (column in cell, row in cell): a cell holds a 2x4 grid of dots
_DOT = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))
_LABEL_W = 8


def ema(values: Sequence[float], alpha: float) -> list[float]:
    """Exponential moving average with bias correction, so the first points are not pulled to 0."""
    if alpha <= 0:
        return list(values)
    out, acc = [], 0.0
    for i, v in enumerate(values, start=1):
        acc = alpha * acc + (1 - alpha) * v
        out.append(acc / (1 - alpha**i))
    return out


def _fmt(v: float) -> str:
    if v == 0 or 0.01 <= abs(v) < 1000:
        return f"{v:.3g}"
    return f"{v:.1e}"


def render_loss_plot(train: Sequence[tuple[int, float]], val: Sequence[tuple[int, float]],
                     width: int, height: int, log_y: bool = False, smoothing: float = 0.0) -> Text:
    """Draw the plot as text of ``height`` lines of ``width`` cells."""
    width, height = max(width, _LABEL_W + 4), max(height, 3)
    train = [(s, v) for s, v in train if math.isfinite(v) and (v > 0 or not log_y)]
    val = [(s, v) for s, v in val if math.isfinite(v) and (v > 0 or not log_y)]
    if not train and not val:
        return Text("waiting for the first metrics…", style="dim")
    smoothed = list(zip([s for s, _ in train], ema([v for _, v in train], smoothing)))
    ys = [v for _, v in smoothed] + [v for _, v in val]
    xs = [s for s, _ in smoothed] + [s for s, _ in val]
    y_of = math.log10 if log_y else (lambda v: v)
    ylo, yhi = y_of(min(ys)), y_of(max(ys))
    if yhi - ylo < 1e-9:
        ylo, yhi = ylo - 0.5, yhi + 0.5
    xlo, xhi = min(xs), max(xs)
    plot_w, plot_h = width - _LABEL_W, height - 1
    dots_w, dots_h = plot_w * 2, plot_h * 4

    def dot_x(step: float) -> int:
        return 0 if xhi == xlo else round((step - xlo) / (xhi - xlo) * (dots_w - 1))

    def dot_y(v: float) -> int:
        return round((yhi - y_of(v)) / (yhi - ylo) * (dots_h - 1))

    cells = [[0] * plot_w for _ in range(plot_h)]
    # one mean value per dot column keeps long runs cheap to draw
    columns: dict[int, list[float]] = {}
    for s, v in smoothed:
        columns.setdefault(dot_x(s), []).append(v)
    path = [(x, dot_y(sum(vs) / len(vs))) for x, vs in sorted(columns.items())]
    for (x0, y0), (x1, y1) in zip(path, path[1:] or path):
        steps = max(abs(x1 - x0), abs(y1 - y0), 1)
        for i in range(steps + 1):
            x = x0 + (x1 - x0) * i // steps
            y = y0 + (y1 - y0) * i // steps
            cells[y // 4][x // 2] |= _DOT[x % 2][y % 4]
    val_cells = {(dot_y(v) // 4, dot_x(s) // 2) for s, v in val}

    mid = (ylo + yhi) / 2
    labels = {0: yhi, plot_h // 2: mid, plot_h - 1: ylo}
    text = Text()
    for row in range(plot_h):
        label = labels.get(row)
        if label is not None:
            shown = 10**label if log_y else label
            text.append(f"{_fmt(shown):>{_LABEL_W - 2}} ┤", style="dim")
        else:
            text.append(" " * (_LABEL_W - 1) + "│", style="dim")
        for col in range(plot_w):
            if (row, col) in val_cells:
                text.append("●", style="bold yellow")
            elif cells[row][col]:
                text.append(chr(0x2800 + cells[row][col]), style="cyan")
            else:
                text.append(" ")
        text.append("\n")
    left, right = f"step {xlo}", f"{xhi}"
    text.append(" " * _LABEL_W + left + " " * max(1, plot_w - len(left) - len(right)) + right,
                style="dim")
    return text


class LossPlot(Widget):
    """Loss curves that redraw to their size; ``l`` toggles the log scale in the train pane."""

    DEFAULT_CSS = "LossPlot { height: 1fr; min-height: 6; }"

    log_y: reactive[bool] = reactive(False)
    smoothing: reactive[float] = reactive(0.9)
    version: reactive[int] = reactive(0)  # bumped when points arrive, to redraw

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.train_points: list[tuple[int, float]] = []
        self.val_points: list[tuple[int, float]] = []

    def add(self, train: Sequence[tuple[int, float]] = (), val: Sequence[tuple[int, float]] = ()) -> None:
        self.train_points.extend(train)
        self.val_points.extend(val)
        if train or val:
            self.version += 1
            self._retitle()

    def cut_after(self, step: int) -> None:
        """Forget the points after ``step`` (a resumed run trains those steps again)."""
        kept_train = [p for p in self.train_points if p[0] <= step]
        kept_val = [p for p in self.val_points if p[0] <= step]
        if len(kept_train) != len(self.train_points) or len(kept_val) != len(self.val_points):
            self.train_points[:], self.val_points[:] = kept_train, kept_val
            self.version += 1

    def clear(self) -> None:
        self.train_points.clear()
        self.val_points.clear()
        self.version += 1

    def watch_log_y(self) -> None:
        self._retitle()

    def watch_smoothing(self) -> None:
        self._retitle()

    def on_mount(self) -> None:
        self._retitle()

    def _retitle(self) -> None:
        scale = "log y" if self.log_y else "linear y"
        smooth = f"EMA {self.smoothing:.2f}" if self.smoothing > 0 else "raw"
        self.border_title = f"Loss ({scale}, {smooth})  ⠒ train  ● val"

    def render(self) -> Text:
        return render_loss_plot(self.train_points, self.val_points, self.content_size.width,
                                self.content_size.height, self.log_y, self.smoothing)
