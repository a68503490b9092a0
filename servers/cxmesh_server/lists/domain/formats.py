"""Reading files row by row: CSV, delimited text, fixed width, XLSX; UTF-8, ISO-8859-1,
Windows-1252. Every reader yields (line number, values) and never loads the whole file."""

from __future__ import annotations

import csv
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from cxmesh.lists.v1 import import_pb2

CHARSETS = {
    "": "utf-8-sig",
    "UTF-8": "utf-8-sig",
    "ISO-8859-1": "iso-8859-1",
    "WINDOWS-1252": "cp1252",
}
DELIMITERS = {",", "|", ":", "\t", ";"}
Row = tuple[int, list[str]]


class FormatError(ValueError):
    """The file cannot be read as described; `field` names the format field at fault."""

    def __init__(self, message: str, field: str = "file") -> None:
        super().__init__(message)
        self.field = field


def codec(charset: str) -> str:
    try:
        return CHARSETS[charset.upper()]
    except KeyError:
        raise FormatError(
            f"charset must be one of UTF-8, ISO-8859-1, Windows-1252; not {charset!r}", "charset"
        ) from None


def check_format(file_format: import_pb2.FileFormat) -> list[tuple[str, str]]:
    """Field violations of a format, as (field, description)."""
    problems = []
    if file_format.file_type == import_pb2.FILE_TYPE_UNSPECIFIED:
        problems.append(("file_type", "is required"))
    if (
        file_format.file_type == import_pb2.FILE_TYPE_DELIMITED
        and file_format.delimiter not in DELIMITERS
    ):
        problems.append(("delimiter", "must be one of | : ; , or tab"))
    if file_format.charset.upper() not in CHARSETS:
        problems.append(("charset", "must be UTF-8, ISO-8859-1 or Windows-1252"))
    if file_format.file_type == import_pb2.FILE_TYPE_FIXED_WIDTH:
        if not file_format.columns:
            problems.append(("columns", "fixed-width files need column positions"))
        for n, column in enumerate(file_format.columns):
            if column.start < 1 or column.width < 1:
                problems.append((f"columns[{n}]", "start and width must be at least 1"))
    for n, column in enumerate(file_format.columns):
        if not column.field:
            problems.append((f"columns[{n}].field", "is required"))
    return problems


def read_rows(path: Path, file_format: import_pb2.FileFormat) -> Iterator[Row]:
    """Every row of the file with its 1-based line number, header included for formats
    that have one (the caller decides what the first row means)."""
    file_type = file_format.file_type
    if file_type == import_pb2.FILE_TYPE_XLSX:
        yield from _xlsx_rows(path)
        return
    encoding = codec(file_format.charset)
    with path.open("r", encoding=encoding, newline="", errors="strict") as handle:
        if file_type == import_pb2.FILE_TYPE_FIXED_WIDTH:
            spans = [(c.start - 1, c.start - 1 + c.width) for c in file_format.columns]
            for number, line in enumerate(handle, start=1):
                text = line.rstrip("\r\n")
                if text.strip():
                    yield number, [text[a:b] for a, b in spans]
            return
        delimiter = file_format.delimiter if file_type == import_pb2.FILE_TYPE_DELIMITED else ","
        reader = csv.reader(handle, delimiter=delimiter, strict=False)
        for values in reader:
            if values and any(v.strip() for v in values):
                yield reader.line_num, values


def _xlsx_rows(path: Path) -> Iterator[Row]:
    from openpyxl import load_workbook
    from openpyxl.utils.exceptions import InvalidFileException

    handle = path.open("rb")  # a file object: openpyxl would insist on an .xlsx file name
    try:
        workbook = load_workbook(handle, read_only=True, data_only=True)
    except (InvalidFileException, KeyError, OSError, ValueError, zipfile.BadZipFile) as exc:
        handle.close()
        raise FormatError(f"not an XLSX workbook: {exc}") from exc
    try:
        sheet = workbook.worksheets[0]
        for number, row in enumerate(sheet.iter_rows(values_only=True), start=1):
            values = ["" if v is None else _cell_text(v) for v in row]
            if any(v.strip() for v in values):
                yield number, values
    finally:
        workbook.close()
        handle.close()


def _cell_text(value: object) -> str:
    # Numbers typed into Excel come back as floats: 4155550123.0 is a phone, not a float.
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def first_row(path: Path, file_format: import_pb2.FileFormat) -> Sequence[str] | None:
    for _, values in read_rows(path, file_format):
        return values
    return None


def sniff_text(sample: bytes, charset: str) -> str:
    """Decodes a sample strictly, so a wrong charset is reported before importing."""
    encoding = codec(charset)
    try:
        return sample.decode(encoding)
    except UnicodeDecodeError as exc:
        # The sample may end inside a multi-byte character.
        if exc.start >= len(sample) - 4:
            return sample[: exc.start].decode(encoding)
        raise FormatError(
            f"the file is not {charset or 'UTF-8'} (byte {exc.start}); set the charset", "charset"
        ) from exc
