"""The report's figures, drawn by matplotlib and returned as inline SVG text (no files, no pyplot).

Each function takes plain arrays and returns one ``<svg>`` element, so the page that embeds them
stays a single self-contained file. Figures are built with ``matplotlib.figure.Figure`` directly
(no global pyplot state, no GUI backend): safe in threads, servers and notebooks alike.
"""

from __future__ import annotations

import functools
import html
import io
import warnings
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

WIDTH_IN = 7.0
HEIGHT_IN = 3.0
MAX_TICK_LABELS = 40  # more class names than this on an axis are unreadable: the axis gets none
TICK_LABEL_CHARACTERS = 24  # a longer class name is shown by its two ends (the page's tables give it whole)


GROUP_COLOURS = ("#4c72b0", "#dd8452", "#8c8c8c")  # blue, orange, grey: told apart with most colour blindness

RC = {"svg.fonttype": "none",  # text stays text: smaller, and searchable in the page
      "text.parse_math": False}  # class names are plain text: "a$_$b" is no formula (and no crash)


def _writable_matplotlib_folder() -> None:
    """Point matplotlib at ``$TMPDIR/zsfs-matplotlib-UID`` when its own config folder cannot be
    written (a read-only home on a cluster): it would otherwise warn on every report and leave a new
    temporary folder behind each time. Left alone when ``MPLCONFIGDIR`` is set, when matplotlib is
    imported already, or when that folder is not this user's own."""
    import os
    import stat
    import sys
    import tempfile

    if "MPLCONFIGDIR" in os.environ or "matplotlib" in sys.modules or not hasattr(os, "getuid"):
        return
    config = os.path.join(os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config"),
                          "matplotlib")
    probe = config
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)  # the nearest folder there is: matplotlib would create the rest in it
    if os.access(probe, os.W_OK | os.X_OK):
        return
    own = os.path.join(tempfile.gettempdir(), f"zsfs-matplotlib-{os.getuid()}")
    try:
        os.mkdir(own, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return
    status = os.lstat(own)  # not followed: a link planted there is no folder of ours
    if stat.S_ISDIR(status.st_mode) and status.st_uid == os.getuid() and not status.st_mode & 0o077:
        os.environ["MPLCONFIGDIR"] = own


def _drawing(draw: Callable[..., str]) -> Callable[..., str]:
    """Run a figure function under :data:`RC`, leaving the caller's matplotlib settings alone."""

    @functools.wraps(draw)
    def wrapper(*args, **kwargs) -> str:
        _writable_matplotlib_folder()
        import matplotlib

        # matplotlib names an SVG's clip paths and markers with a hash salted at random unless given a
        # salt: a fixed one renders a run twice the same; one per figure keeps the names of the page's
        # figures apart
        salt = f"zsfs {draw.__name__} {kwargs.get('title', '')}"
        with matplotlib.rc_context({**RC, "svg.hashsalt": salt}), warnings.catch_warnings():
            # Text stays text in the SVG (svg.fonttype none): the browser draws every glyph, so
            # matplotlib's font lacking one (CJK class names) is no news for the user.
            warnings.filterwarnings("ignore", message="Glyph .* missing from font", category=UserWarning)
            # a class name of thousands of characters leaves the axes no room: the figure is drawn
            # unadjusted, and the page's tables give the names whole
            warnings.filterwarnings("ignore", message="constrained_layout not applied", category=UserWarning)
            return draw(*args, **kwargs)

    return wrapper


def _figure(width: float = WIDTH_IN, height: float = HEIGHT_IN):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def tick_labels(classes: Sequence[str]) -> list[str]:
    """The class names on an axis: whole up to :data:`TICK_LABEL_CHARACTERS`, else their first and
    last characters around an ellipsis (walkthrough: long names were cut by the figure's edge, and
    left the confusion matrix 50 pixels wide); names shortened alike get their class number too
    ('3: photograph … sports car': its place in the run's class list, from 1; review)."""
    half = (TICK_LABEL_CHARACTERS - 1) // 2
    shown = [name if len(name) <= TICK_LABEL_CHARACTERS else f"{name[:half]}…{name[-half:]}" for name in classes]
    counts = Counter(shown)
    return [f"{number}: {label}" if counts[label] > 1 else label for number, label in enumerate(shown, start=1)]


def _svg(figure) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None})  # no date: the same run renders the same
    text = buffer.getvalue()
    svg = text[text.index("<svg"):]  # drop the XML prolog and doctype: the SVG sits inside HTML
    # one image named by its title for a screen reader, which read its tick labels one by one (a review)
    name = html.escape(" ".join(axes.get_title() for axes in figure.axes if axes.get_title()), quote=True)
    return f'<svg role="img" aria-label="{name}"' + svg[len("<svg"):]


@_drawing
def histogram(values: np.ndarray, *, title: str, xlabel: str, flagged_from: float | None = None,
              bins: int = 60, groups: np.ndarray | None = None, group_names: Sequence[str] = ()) -> str:
    """Counts of ``values`` (NaN left out) on a log scale, with a line where flagging starts.
    ``groups``: each value's index into ``group_names``; each group's counts are then drawn as an
    outline of its own colour, named in the legend."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    groups = None if groups is None else np.asarray(groups)[finite]
    values = values[finite]
    figure = _figure()
    axes = figure.add_subplot()
    if values.size:
        from matplotlib.ticker import FuncFormatter, NullFormatter

        if groups is not None and len(group_names) > 1:  # overlaid outlines: stacked on a log scale, a small group on top vanished
            edges = np.histogram_bin_edges(values, bins)
            for g in (g for g in range(len(group_names)) if (groups == g).any()):
                axes.hist(values[groups == g], bins=edges, histtype="step", linewidth=1.5,
                          color=GROUP_COLOURS[g % len(GROUP_COLOURS)], label=group_names[g])
        else:
            axes.hist(values, bins=bins, color=GROUP_COLOURS[0])
        axes.set_yscale("log")
        # Plain numbers ("1,000"): the default labels are formulas ("10^{3}"), shown raw with
        # parse_math off. Minor ticks are labelled only when the counts span under a decade
        # (there may be no power of ten between them).
        plain = FuncFormatter(lambda value, _: f"{value:,.0f}" if value >= 1 else f"{value:g}")
        low, high = axes.get_ylim()
        axes.yaxis.set_major_formatter(plain)
        axes.yaxis.set_minor_formatter(plain if high < 10 * low else NullFormatter())
    if flagged_from is not None:
        axes.axvline(flagged_from, color="#c44e52", linestyle="--", label="flagged OOD from here")
    if flagged_from is not None or (values.size and groups is not None and len(group_names) > 1):
        axes.legend(loc="best", fontsize="small")
    axes.set(title=title, xlabel=xlabel, ylabel="images (log scale)")
    return _svg(figure)


@_drawing
def cycles(kept: Sequence[int], precision: Sequence[float | None] | None) -> str:
    """Pseudo-labels kept per cycle (bars) and, when labels exist, their precision (line)."""
    figure = _figure()
    axes = figure.add_subplot()
    index = np.arange(len(kept))
    axes.bar(index, kept, color="#4c72b0")
    axes.set(title="Pseudo-labels kept per cycle (0 = seeds)", xlabel="cycle", ylabel="images kept")
    axes.set_xticks(index)
    if precision is not None:
        right = axes.twinx()
        values = np.array([np.nan if p is None else p for p in precision], dtype=np.float64)
        right.plot(index, values, color="#c44e52", marker="o")
        right.set(ylabel="precision (true label)", ylim=(0, 1.02))
    return _svg(figure)


@_drawing
def per_class_accuracy(classes: Sequence[str], accuracy: np.ndarray) -> str:
    """Accuracy of each class, sorted, worst first (names shown when few enough); NaN: no image
    has the class as its true label (marked "no images", not drawn as a zero); a zero is marked "0"."""
    accuracy = np.asarray(accuracy, dtype=np.float64)
    order = np.argsort(np.nan_to_num(accuracy, nan=-1.0), kind="stable")
    figure = _figure(height=HEIGHT_IN if len(classes) > MAX_TICK_LABELS else max(HEIGHT_IN, 0.22 * len(classes) + 1))
    axes = figure.add_subplot()
    if len(classes) > MAX_TICK_LABELS:
        axes.plot(np.arange(len(order)), accuracy[order], color="#4c72b0")
        axes.set(xlabel=f"{len(classes)} classes, worst to best", ylabel="accuracy", ylim=(0, 1.02))
    else:
        axes.barh(np.arange(len(order)), accuracy[order], color="#4c72b0")
        for position in np.flatnonzero(np.isnan(accuracy[order])):
            # (#666: 5.7:1 on white, legible in small print; #888 was 3.5:1)
            axes.text(0.01, position, "no images", va="center", fontsize=8, color="#666")
        for position in np.flatnonzero(accuracy[order] == 0):  # a zero draws no bar: said, not left blank
            axes.text(0.01, position, "0", va="center", fontsize=8, color="#444")
        labels = tick_labels(classes)
        axes.set_yticks(np.arange(len(order)), [labels[i] for i in order])
        # Half a row of room below the first row and above the last: "no images" clear of the axis line.
        # on two lines: centred under axes that long names narrow, one line ran past the figure's edge
        axes.set(xlabel="accuracy on the images\nof the class (true label)", xlim=(0, 1.02),
                 ylim=(-0.7, len(order) - 0.3))
    axes.set_title("Per-class accuracy")
    return _svg(figure)


@_drawing
def confusion(classes: Sequence[str], matrix: np.ndarray, row_totals: np.ndarray | None = None) -> str:
    """Row-normalised confusion matrix (true class in rows), as an image. ``row_totals``: the images
    of each true class, where ``matrix`` holds only some of the predicted classes' columns."""
    matrix = np.asarray(matrix, dtype=np.float64)
    totals = matrix.sum(axis=1) if row_totals is None else np.asarray(row_totals, dtype=np.float64)
    rows = matrix / np.maximum(totals[:, None], 1)
    names = tick_labels(classes) if len(classes) <= MAX_TICK_LABELS else []
    longest = max(map(len, names), default=0)
    size = min(8.0, 3.0 + 0.25 * len(classes) + 0.06 * longest)  # room for the names beside the matrix
    figure = _figure(size + 1.2, size)
    axes = figure.add_subplot()
    image = axes.imshow(rows, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    figure.colorbar(image, ax=axes, label="fraction of the true class")
    axes.set(title="Confusion matrix", xlabel="predicted", ylabel="true label")
    if len(classes) <= MAX_TICK_LABELS:
        ticks = np.arange(len(classes))
        axes.set_xticks(ticks, names, rotation=90)
        axes.set_yticks(ticks, names)
    else:
        axes.set_xticks([])
        axes.set_yticks([])
    return _svg(figure)
