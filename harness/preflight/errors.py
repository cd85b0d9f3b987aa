"""The one line a user error ends with: ours (:class:`ConfigError`), Hydra's and OmegaConf's composition errors, a
folder that cannot be written. ``user_error(exc)`` returns None for anything else, so a bug keeps its traceback."""

from __future__ import annotations

import dataclasses
import difflib
import errno
import re
import string
from typing import Any

from harness.fields import ConfigError

WRITE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR}
# Conditions of the filesystem, not of the code: each is one line naming the path and what to do.
PATH_ERRNOS = {
    errno.ELOOP: "a symbolic link in it points back into itself; point the link at a real folder, or give that folder",
    errno.ENAMETOOLONG: "its name is longer than the filesystem allows; choose a shorter folder",
    errno.EISDIR: "it is a folder where a file belongs; move it aside",
    errno.EEXIST: "something else already holds that name (a file, or a link to nowhere); move it aside",
    errno.EIO: "the disk reported an I/O error; check the disk, or use another folder",
    errno.ENOENT: "it (or a folder above it) is gone; another process may have removed it: run the command again",
}


# --------------------------------------------------------------------------------------------- one-line errors
# What Hydra's override grammar reads in an unquoted value (letters and digits of ASCII only); any other character
# ('=', ',', a letter with an accent, a CJK name, a quote) needs the value quoted.
UNQUOTED = frozenset(string.ascii_letters + string.digits + "_-+./\\$%*@?|:~ \t")


def quote_hint(override: str) -> str:
    """A hint for an override whose value holds a character Hydra does not read unquoted: '=' or ',' (a path such as
    a study's own job folders, ``.../0_pipeline=dpo,seed=1/policy``: Hydra reads ',' as a sweep and '=' as a second
    key), or a letter beyond ASCII (a folder named in another language)."""
    key, _, value = override.partition("=")
    if key.lstrip("+~") == "study":
        from harness.config import STUDY_EXAMPLE

        return f"; a study is a list of jobs, each a list of quoted overrides: {STUDY_EXAMPLE}"
    odd = sorted({c for c in value if c not in UNQUOTED}, key=value.index)
    if not odd or value[:1] in "'\"[{" or value.endswith(")"):  # quoted, a list or mapping, a sweep function
        return ""
    chars = " ".join(repr(c) for c in odd[:4])
    return f"; if it is one value with {chars} (e.g. a path), quote it: \"{key}='{value}'\" in the shell"


def _first_line(text: str) -> str:
    return next((s.strip() for s in str(text).splitlines() if s.strip()), "")


def _fields(cls: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []


def _omegaconf_line(e: Exception) -> str | None:
    """An OmegaConf error with a ``full_key``: an unknown key (with the keys allowed there), a value of the wrong
    type (with the type wanted), a missing value."""
    from omegaconf.errors import (
        ConfigAttributeError,
        ConfigKeyError,
        MissingMandatoryValue,
        ValidationError,
    )

    key = getattr(e, "full_key", None)
    if not key:
        return None
    owner = getattr(e, "object_type", None)
    allowed = _fields(owner)
    if isinstance(e, (ConfigKeyError, ConfigAttributeError)) and allowed:
        leaf = key.rsplit(".", 1)[-1]
        close = difflib.get_close_matches(leaf, allowed, n=1)
        hint = f" (did you mean {key.rsplit('.', 1)[0] + '.' if '.' in key else ''}{close[0]}?)" if close else ""
        where = f"under {key.rsplit('.', 1)[0]}" if "." in key else "at the top level"
        return f"{key}: unknown key{hint}; valid keys {where}: {', '.join(allowed)}"
    merge = re.search(r"Cannot merge (DictConfig|ListConfig) with (DictConfig|ListConfig)", str(e))
    if merge:  # a mapping given where a list belongs, or the other way round
        from harness.config import STUDY_EXAMPLE

        given, wanted = ("a mapping", "a list") if merge.group(1) == "DictConfig" else ("a list", "a mapping")
        return f"{key}: is {given}, but {key} takes {wanted}" + (
            f"; write it as {STUDY_EXAMPLE}"
            if key == "study"
            else f"; write it as {key}=[...]"
            if wanted == "a list"
            else ""
        )
    if isinstance(e, MissingMandatoryValue):
        return f"{key}: required value is missing (???); set it, e.g. {key}=<value>"
    if isinstance(e, ValidationError):
        leaf = key.rsplit(".", 1)[-1]
        wanted = next((str(f.type) for f in dataclasses.fields(owner) if f.name == leaf), None) if allowed else None
        return f"{key}: {_first_line(str(e))}" + (f"; give {key} a value of type {wanted}" if wanted else "")
    return f"{key}: {_first_line(str(e))}"


def _hydra_line(e: Exception) -> str | None:
    from hydra.errors import (
        HydraException,
        MissingConfigException,
        OverrideParseException,
    )
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(e, MissingConfigException) and e.options is not None and e.missing_cfg_file:
        group, _, option = str(e.missing_cfg_file).rpartition("/")
        # `<name>_schema` entries are the typed schemas each conf/pipeline/<name>.yaml lists (harness.config
        # register_configs): Hydra's internals, not options a user may choose
        options = [o for o in e.options if not str(o).endswith("_schema")]
        return f"{group}: no option '{option}'; choose one of {', '.join(options)}"
    if isinstance(e, OverrideParseException):
        return (
            f"command line: cannot parse '{e.override}' ({_first_line(e.message)}); write overrides as key=value"
            + quote_hint(str(e.override))
        )
    if isinstance(e.__cause__, OmegaConfBaseException):
        line = _omegaconf_line(e.__cause__)
        if line:
            return line
    if isinstance(e, OmegaConfBaseException):
        return _omegaconf_line(e) or f"config: {_first_line(str(e))}"
    if isinstance(e, HydraException):
        first = _first_line(str(e))
        if first.startswith("Ambiguous value for argument"):
            return f"command line: {first}; write a list as key=[a,b], or add -m to sweep over the values"
        return f"config: {first}"
    return None


def user_error(e: BaseException) -> str | None:
    """The one line a user error ends with, or None when ``e`` is not a user error (a bug keeps its traceback)."""
    if isinstance(e, ConfigError):
        return _first_line(str(e))
    if isinstance(e, OSError) and e.errno in WRITE_ERRNOS and e.filename:
        return (
            f"output: cannot write '{e.filename}' ({e.strerror}); set hydra.run.dir (hydra.sweep.dir with -m) and "
            "cache_dir to folders you can write, with free space"
        )
    if isinstance(e, OSError) and e.errno in PATH_ERRNOS and e.filename:
        return f"path: '{e.filename}' ({e.strerror}): {PATH_ERRNOS[e.errno]}"
    if isinstance(e, Exception):
        return _hydra_line(e)
    return None
