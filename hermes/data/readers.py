"""Dataset readers: BUSI as distributed, UDIAT (Dataset B) and a generic folder layout.

Every reader returns a list of :class:`Record` (image path, mask paths, class name, id); pixels
are read again later by the datasets. Readers decode every image and mask once and raise an
error naming the file (or the row of the label file) on the first problem: a missing mask, a
file that does not decode (a truncated PNG included), a mask whose size differs from its image,
an empty class folder, a folder without images, an image without a label, and in a CSV of
labels a duplicate id or a label that is not one of the classes. :func:`scan_busi` and
:func:`scan_folder` collect those problems instead of raising, for ``python -m hermes.data``, so
the inspector and the trainer find exactly the same problems. Mask files that belong to no
image are harmless: they are listed in :attr:`Scan.orphan_masks`, not as problems.

Layouts:

* BUSI: ``<root>/<class>/<class> (<n>).png`` with ``<stem>_mask.png`` beside each image and,
  for images with several lesions, ``<stem>_mask_1.png``, ``<stem>_mask_2.png`` (OR-combined).
* folder (generic): ``<root>/images/<id>.<ext>``, ``<root>/masks/<id>.<ext>`` (or
  ``<id>_mask.<ext>``), ``<root>/labels.csv`` with a header ``id,label``.
* UDIAT: ``<root>/original/000001.png``, ``<root>/GT/000001.png`` and one CSV of labels in
  ``<root>`` (export the distributed label sheet as CSV; columns ``id,label`` or the sheet's
  own ``Image,Type``; ids may omit leading zeros and the extension; labels are lower-cased).
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hermes.data.io import IMAGE_SUFFIXES, image_size

logger = logging.getLogger(__name__)

_BUSI_MASK = re.compile(r"^(?P<stem>.+)_mask(?:_(?P<n>\d+))?$")
_ID_COLUMNS = ("id", "image", "name", "file", "filename", "image_id")
_LABEL_COLUMNS = ("label", "class", "type", "category", "diagnosis")


@dataclass(frozen=True)
class Record:
    """One sample on disk.

    Attributes:
        id: unique id within the dataset (BUSI: ``"benign/benign (12)"``; folder: file stem).
        image: path of the image file.
        masks: paths of its mask files (combined with OR when several).
        label: class name (lower case).
    """

    id: str
    image: Path
    masks: tuple[Path, ...]
    label: str


@dataclass
class Scan:
    """Result of scanning a dataset folder without stopping at the first problem.

    Attributes:
        records: the usable samples.
        problems: one human-readable line per problem (each names the file or the CSV row);
            a reader raises on the first of them.
        orphan_masks: mask files that belong to no image (harmless, not a problem).
        sizes: ``(width, height)`` of each usable image, by record id.
    """

    records: list[Record] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    orphan_masks: list[Path] = field(default_factory=list)
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def _check_sizes(image: Path, masks: Sequence[Path]) -> tuple[int, int]:
    """Decode an image and its masks, compare their sizes; return the image (width, height)."""
    size = image_size(image, decode=True)
    for m in masks:
        msize = image_size(m, decode=True)
        if msize != size:
            raise ValueError(
                f"mask {m} has size {msize[0]}x{msize[1]} (WxH) but its image {image} "
                f"has size {size[0]}x{size[1]}"
            )
    return size


def _validate(scan: Scan, record: Record, check: bool) -> None:
    """Append ``record`` to ``scan`` if its files are consistent, else note the problem."""
    if not record.masks:
        scan.problems.append(f"missing mask for image {record.image}")
        return
    if check:
        try:
            scan.sizes[record.id] = _check_sizes(record.image, record.masks)
        except (ValueError, FileNotFoundError) as err:
            scan.problems.append(str(err))
            return
    scan.records.append(record)


def _filter_classes(records: list[Record], classes: Iterable[str] | None) -> list[Record]:
    if classes is None:
        return records
    wanted = [c.lower() for c in classes]
    return [r for r in records if r.label in wanted]


def scan_busi(root: str | Path, classes: Iterable[str] | None = None, check: bool = True) -> Scan:
    """Scan BUSI as distributed: ``<root>/<class>/<image>.png`` and ``<stem>_mask[_n].png``.

    Args:
        root: the ``Dataset_BUSI_with_GT`` folder.
        classes: class folders to read (default: every sub-folder).
        check: decode every image and mask and compare their sizes.

    Raises:
        FileNotFoundError: ``root`` or a class folder asked for is missing, or no class folder
            holds an image (not a BUSI folder).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"BUSI folder not found: {root}")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    if not any(_is_image(p) for cdir in class_dirs for p in cdir.iterdir()):
        raise FileNotFoundError(
            f"no images in the sub-folders {[p.name for p in class_dirs]} of {root}: not a "
            "BUSI folder (<class>/<name>.png with <name>_mask.png beside it)"
        )
    if classes is not None:
        wanted = [c.lower() for c in classes]
        found = {p.name.lower(): p for p in class_dirs}
        missing = [c for c in wanted if c not in found]
        if missing:
            raise FileNotFoundError(
                f"class folder(s) {missing} not found in {root}; found {sorted(found)}"
            )
        class_dirs = [found[c] for c in wanted]
    scan = Scan()
    for cdir in class_dirs:
        label = cdir.name.lower()
        images: dict[str, Path] = {}
        masks: dict[str, list[tuple[int, Path]]] = {}
        for path in sorted(cdir.iterdir()):
            if not _is_image(path):
                continue
            match = _BUSI_MASK.match(path.stem)
            if match:
                n = int(match.group("n")) if match.group("n") else 0
                masks.setdefault(match.group("stem"), []).append((n, path))
            else:
                images[path.stem] = path
        if not images:
            scan.problems.append(f"class folder {cdir} holds no images")
        for stem, mpaths in masks.items():
            if stem not in images:
                scan.orphan_masks.extend(p for _, p in mpaths)
        for stem, ipath in images.items():
            mpaths = tuple(p for _, p in sorted(masks.get(stem, [])))
            if not mpaths:
                scan.problems.append(
                    f"missing mask for image {ipath} (expected {cdir / (stem + '_mask.png')})"
                )
                continue
            _validate(scan, Record(f"{label}/{stem}", ipath, mpaths, label), check)
    return scan


def _raise_first(scan: Scan) -> None:
    if scan.problems:
        first = scan.problems[0]
        more = f" (and {len(scan.problems) - 1} more problem(s))" if len(scan.problems) > 1 else ""
        if first.startswith("missing mask") or first.startswith("image file not found"):
            raise FileNotFoundError(first + more)
        raise ValueError(first + more)


def read_busi(
    root: str | Path, classes: Iterable[str] | None = ("benign", "malignant")
) -> list[Record]:
    """Read BUSI; raise on the first problem (missing mask, unreadable file, size mismatch).

    Args:
        root: the ``Dataset_BUSI_with_GT`` folder.
        classes: class folders taking part (default benign and malignant, as in the paper).

    Raises:
        FileNotFoundError: missing folder or mask, or no images (the message names the file).
        ValueError: unreadable image or mask, sizes differ, or an empty class folder (the
            message names the file or folder).
    """
    scan = scan_busi(root, classes)
    _raise_first(scan)
    return scan.records


def _read_labels(
    csv_path: Path, classes: Iterable[str] | None = None
) -> tuple[dict[str, str], list[str]]:
    """Read a CSV of labels (header with an id column and a label column) into id -> label.

    Returns the table and one problem per bad row, naming the file, the line and the row: an id
    seen before (ids compared by file stem, numeric ids by value; the first row is kept), and,
    when ``classes`` is given, a label that is not one of them (kept in the table, so that its
    image is left out without a second problem).

    Raises:
        ValueError: the file is empty, its header has no id or label column, or a row has too
            few columns.
    """
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        raise ValueError(f"label file {csv_path} is empty; expected a header 'id,label'")
    header = [h.strip().lower() for h in rows[0]]
    id_col = next((header.index(c) for c in _ID_COLUMNS if c in header), None)
    label_col = next((header.index(c) for c in _LABEL_COLUMNS if c in header), None)
    if id_col is None or label_col is None:
        raise ValueError(
            f"label file {csv_path} has header {rows[0]}; expected an id column (one of "
            f"{list(_ID_COLUMNS)}) and a label column (one of {list(_LABEL_COLUMNS)})"
        )
    wanted = None if classes is None else [c.lower() for c in classes]
    labels: dict[str, str] = {}
    first_line: dict[str, int] = {}
    problems: list[str] = []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(id_col, label_col):
            raise ValueError(f"label file {csv_path} line {line}: too few columns in {row}")
        where = f"label file {csv_path} line {line} ({','.join(row)})"
        stem = Path(row[id_col].strip()).stem
        label = row[label_col].strip().lower()
        key = str(int(stem)) if stem.isdigit() else stem
        if key in first_line:
            problems.append(f"{where}: duplicate id {stem!r}, first on line {first_line[key]}")
            continue
        first_line[key] = line
        if wanted is not None and label not in wanted:
            problems.append(f"{where}: unknown label {label!r}; expected one of {wanted}")
        labels[stem] = label
    return labels, problems


def _lookup(labels: dict[str, str], stem: str) -> str | None:
    """Find a label by file stem, also matching numeric ids without leading zeros."""
    if stem in labels:
        return labels[stem]
    if stem.isdigit():
        for key, value in labels.items():
            if key.isdigit() and int(key) == int(stem):
                return value
    return None


def _find_mask(mask_dir: Path, stem: str) -> Path | None:
    for name in (stem, f"{stem}_mask"):
        for suffix in IMAGE_SUFFIXES:
            for candidate in (mask_dir / f"{name}{suffix}", mask_dir / f"{name}{suffix.upper()}"):
                if candidate.is_file():
                    return candidate
    return None


def scan_folder(
    root: str | Path,
    images: str = "images",
    masks: str = "masks",
    labels: str | None = "labels.csv",
    classes: Iterable[str] | None = None,
    check: bool = True,
) -> Scan:
    """Scan an image folder, a mask folder and a CSV of labels (see the module docstring).

    Args:
        root: dataset folder.
        images: image sub-folder of ``root``.
        masks: mask sub-folder of ``root`` (mask named like the image, or ``<stem>_mask``).
        labels: CSV file in ``root``; ``None`` takes the only ``*.csv`` in ``root``.
        classes: the classes; a row with another label is a problem (default: any label).
        check: decode every image and mask and compare their sizes.

    Raises:
        FileNotFoundError: a folder or the label file is missing.
        ValueError: the label file's header or a row's column count is wrong.
    """
    root = Path(root)
    image_dir, mask_dir = root / images, root / masks
    for d, what in ((image_dir, "image"), (mask_dir, "mask")):
        if not d.is_dir():
            raise FileNotFoundError(f"{what} folder not found: {d}")
    if labels is None:
        csvs = sorted(root.glob("*.csv"))
        if len(csvs) != 1:
            raise FileNotFoundError(
                f"expected exactly one CSV of labels in {root}, found {[p.name for p in csvs]}"
            )
        csv_path = csvs[0]
    else:
        csv_path = root / labels
        if not csv_path.is_file():
            raise FileNotFoundError(f"label file not found: {csv_path}")
    table, label_problems = _read_labels(csv_path, classes)
    scan = Scan(problems=label_problems)
    used_masks: set[Path] = set()
    image_paths = sorted(p for p in image_dir.iterdir() if _is_image(p))
    if not image_paths:
        scan.problems.append(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {image_dir}")
    for ipath in image_paths:
        stem = ipath.stem
        label = _lookup(table, stem)
        if label is None:
            scan.problems.append(f"no label for image {ipath} in {csv_path}")
            continue
        mpath = _find_mask(mask_dir, stem)
        if mpath is None:
            scan.problems.append(
                f"missing mask for image {ipath} (expected {mask_dir / ipath.name})"
            )
            continue
        used_masks.add(mpath)
        _validate(scan, Record(stem, ipath, (mpath,), label), check)
    scan.orphan_masks = sorted(
        p for p in mask_dir.iterdir() if _is_image(p) and p not in used_masks
    )
    scan.records = _filter_classes(scan.records, classes)
    return scan


def read_folder(
    root: str | Path,
    classes: Iterable[str] | None = ("benign", "malignant"),
    images: str = "images",
    masks: str = "masks",
    labels: str | None = "labels.csv",
) -> list[Record]:
    """Read the generic layout; raise on the first problem.

    Raises:
        FileNotFoundError: missing folder, label file or mask (the message names the file).
        ValueError: unreadable file, unlabeled image, size mismatch, no image at all, or in
            the label file a duplicate id or a label not in ``classes`` (names the file or row).
    """
    scan = scan_folder(root, images, masks, labels, classes)
    _raise_first(scan)
    return scan.records


def read_udiat(
    root: str | Path, classes: Iterable[str] | None = ("benign", "malignant")
) -> list[Record]:
    """Read UDIAT Dataset B: ``original/``, ``GT/`` and the one CSV of labels in ``root``."""
    return read_folder(root, classes, images="original", masks="GT", labels=None)


def read_dataset(
    name: str, root: str | Path, classes: Iterable[str] | None = ("benign", "malignant")
) -> list[Record]:
    """Read a dataset by layout name: ``"busi"``, ``"udiat"`` or ``"folder"``."""
    readers = {"busi": read_busi, "udiat": read_udiat, "folder": read_folder}
    if name not in readers:
        raise ValueError(f"unknown dataset layout {name!r}; expected one of {sorted(readers)}")
    records = readers[name](root, classes)
    if classes is not None:
        present = {r.label for r in records}
        absent = [c for c in classes if c.lower() not in present]
        if absent:
            raise ValueError(
                f"class(es) {absent} have no images in {root}; found {sorted(present)}"
            )
    return records
