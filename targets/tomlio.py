"""Writing a target file's [calibration] tables back, atomically, keeping everything above them.

The [calibration] table (and its sub-tables) must be the last part of a target file: a write-back
replaces the text from the `[calibration]` header to the end and leaves the rest (comments included)
untouched. The new text is validated as a whole target before it replaces the file (temp file in the
same folder + os.replace, so a crash never leaves a half-written target).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from hwopt.errors import TargetError
from hwopt.fileio import atomic_write

from .schema import CAL_META, KIND_FIELDS, KINDS, TERMS


def read_target_text(path: str | os.PathLike) -> str:
    """The text of the target file at `path`; TargetError naming the file if it cannot be read or is not UTF-8
    (TOML files are UTF-8 by definition)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TargetError(f"cannot read: {e.strerror or e}", path=str(path)) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise TargetError(f"not UTF-8 text (byte 0x{data[e.start]:02x} on line {line}); a target file is TOML, "
                          "which must be UTF-8", path=str(path)) from None


def _val(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.6g}" if ("e" in f"{v:.6g}" or "." in f"{v:.6g}") else f"{v:.6g}.0"
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


def format_calibration(cal: dict) -> str:
    lines = ["[calibration]", f"default = {_val(cal['default'])}"]
    for rt in [k for k in cal if k != "default"]:
        table = cal[rt]
        lines += ["", f"[calibration.{rt}]"]
        for k in CAL_META:
            if k in table:
                lines.append(f"{k} = {_val(table[k])}")
        w = max(len(k) for k in KINDS)
        if table.get("form") == "terms":
            # µs per unit of each monomial; zero terms are left out (absent = 0)
            lines.append(f"[calibration.{rt}.terms]")
            for kind in KINDS:
                e = table["terms"][kind]
                inner = ", ".join(f"{k} = {_val(float(e[k]))}" for k in TERMS if k in e and float(e[k]) != 0.0)
                lines.append(f"{kind:<{w}} = {{ {inner} }}")
            continue
        lines.append(f"[calibration.{rt}.kinds]")
        for kind in KINDS:
            e = table["kinds"][kind]
            inner = ", ".join(f"{k} = {_val(float(e[k]))}" for k in KIND_FIELDS)
            lines.append(f"{kind:<{w}} = {{ {inner} }}")
    return "\n".join(lines) + "\n"


def replace_calibration_text(text: str, cal: dict) -> str:
    m = re.search(r"^\[calibration\]\s*$", text, re.M)
    head = text[:m.start()] if m else text.rstrip("\n") + "\n\n"
    return head + format_calibration(cal)


def write_calibration(path: str | os.PathLike, cal: dict) -> None:
    """Replace the [calibration] part of the target file at `path` with `cal`, atomically."""
    from . import parse_target

    path = Path(path)
    text = replace_calibration_text(read_target_text(path), cal)
    parse_target(text, str(path))  # validate before touching the file
    atomic_write(path, text)


def update_runtime(path: str | os.PathLike, runtime: str, table: dict, make_default: bool = False) -> None:
    """Set one runtime's calibration table in the file at `path` (keeping the other runtimes)."""
    import tomllib

    path = Path(path)
    try:
        doc = tomllib.loads(read_target_text(path))
    except tomllib.TOMLDecodeError as e:
        raise TargetError(f"not valid TOML: {e}", path=str(path)) from None
    cal = dict(doc.get("calibration", {}))
    cal[runtime] = table
    if make_default or "default" not in cal:
        cal["default"] = runtime
    # bootstrap tables (method "none") go once a fitted one exists
    cal = {"default": cal["default"], **{k: v for k, v in cal.items() if k != "default"
                                          and (k == cal["default"] or not (isinstance(v, dict) and v.get("method") == "none"))}}
    write_calibration(path, cal)
