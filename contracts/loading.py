"""Load contract files: strict YAML, strict model, errors that name the file, the key and the fix."""

from __future__ import annotations

import hashlib
import json
import types
import typing
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from contracts.column_treatments import TREATMENT_NAMES
from contracts.model import DEFER_CHECKS, Contract
from core.errors import ConfigError, ContractError

MAX_CONTRACT_BYTES = 1 << 20
# A contract nests a handful of levels (datasets → columns → options); the cap keeps PyYAML's scanner (quadratic
# in flow nesting) and its recursive composer (RecursionError) far from harm, whatever a file holds.
MAX_NESTING = 32

_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_NUMBER_TAGS = {"tag:yaml.org,2002:int": "a whole number", "tag:yaml.org,2002:float": "a number"}


class _TooDeep(yaml.YAMLError):
    """Raised by the scanner itself, as soon as a collection opens beyond ``MAX_NESTING`` levels."""

    def __init__(self, mark: yaml.Mark | None) -> None:
        super().__init__(f"nested more than {MAX_NESTING} levels deep")
        self.mark = mark


class _ValueProblem(Exception):
    """A scalar that PyYAML recognises (a date, a number) but cannot build: where it is and what is wrong."""

    def __init__(self, node: yaml.Node, message: str, fix: str) -> None:
        super().__init__(message)
        self.node, self.message, self.fix = node, message, fix


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader with bounded nesting, no duplicate keys, and every construction failure tied to its node.

    The nesting bound is enforced by the scanner while it reads (flow ``[``/``{`` levels and block
    indentation levels), so a hostile file costs at most ``MAX_NESTING`` levels of work before it is refused.
    """

    _root: yaml.Node | None = None

    def fetch_flow_collection_start(self, TokenClass: type[yaml.Token]) -> None:
        if self.flow_level >= MAX_NESTING:
            raise _TooDeep(self.get_mark())
        super().fetch_flow_collection_start(TokenClass)

    def add_indent(self, column: int) -> bool:
        added: bool = super().add_indent(column)
        if len(self.indents) > MAX_NESTING:
            raise _TooDeep(self.get_mark())
        return added

    def construct_document(self, node: yaml.Node) -> Any:
        self._root = node
        return super().construct_document(node)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (yaml.YAMLError, _ValueProblem):
            raise
        except (ValueError, OverflowError) as exc:
            if node.tag == _TIMESTAMP_TAG:
                # Python's own words ("month must be in 1..12", "day is out of range for month") hold no data.
                reason = str(exc) if isinstance(exc, ValueError) and str(exc)[:40].isascii() else "out of range"
                raise _ValueProblem(node, f"{node.value!s:.40} is not a real calendar date ({reason})",
                                    "write a date that exists as YYYY-MM-DD, e.g. 2026-12-01") from None
            what = _NUMBER_TAGS.get(node.tag, "a value of its YAML type")
            raise _ValueProblem(node, f"the value is not {what}",
                                "correct the value, or quote it to make it text") from None
        except (TypeError, AttributeError) as exc:
            # e.g. a list as a mapping key, !!set or !!map on a scalar, !!timestamp on text
            raise _ValueProblem(node, f"the value cannot be read as its YAML type ({type(exc).__name__})",
                                "write plain keys, values, lists and mappings, without YAML tags (!!…)") from None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        if not isinstance(node, yaml.MappingNode):  # !!map on a scalar or a list
            raise _ValueProblem(node, "a mapping was expected here", "write key: value lines")
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable) or isinstance(key, list | dict):
                raise _ValueProblem(key_node, "a key must be a plain name, not a list or a mapping",
                                    "write the key as a plain name")
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _path_to(root: yaml.Node | None, target: yaml.Node) -> str | None:
    """The dotted key path (``valid.from``, ``datasets[0].columns``) of ``target`` below ``root``, if found."""
    if root is None:
        return None
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    while stack:  # nesting is bounded by MAX_NESTING, but walk iteratively anyway
        node, path = stack.pop()
        if node is target:
            return path or None
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                name = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
                if key_node is target:
                    return f"{path}.{name}" if path else str(name)
                stack.append((value_node, f"{path}.{name}" if path else str(name)))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((child, f"{path}[{i}]") for i, child in enumerate(node.value))
    return None


def _where(mark: yaml.Mark | None) -> str | None:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else None


def parse_yaml(text: str, file: str) -> Any:
    """Parse YAML safely: bounded nesting, no anchors/aliases (no expansion bombs), no duplicate keys.

    Every failure, of any kind, is a ``ContractError`` naming the file, the place (key path or line) and the
    fix; nothing from PyYAML or Python escapes as a traceback.
    """
    loader: _StrictLoader | None = None
    try:
        for event in yaml.parse(text, Loader=_StrictLoader):
            if isinstance(event, yaml.AliasEvent):
                mark = event.start_mark
                raise ContractError("YAML aliases (*name) are not allowed in configuration files",
                                    file=file, key=f"line {mark.line + 1}" if mark is not None else None,
                                    fix="write the value out in full")
        loader = _StrictLoader(text)
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except _TooDeep as exc:
        raise ContractError(f"the YAML is nested more than {MAX_NESTING} levels deep", file=file,
                            key=_where(exc.mark),
                            fix="a contract nests a few levels (datasets, columns, options): remove the extra "
                                "brackets or indentation") from None
    except _ValueProblem as exc:
        path = _path_to(loader._root if loader is not None else None, exc.node)
        at = _where(exc.node.start_mark)
        raise ContractError(exc.message, file=file, key=f"{path} ({at})" if path and at else (path or at),
                            fix=exc.fix) from None
    except yaml.YAMLError as exc:
        problem_mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or "not valid YAML"
        context = getattr(exc, "context", None)
        if context and isinstance(exc, yaml.composer.ComposerError):  # "expected a single document …, but found …"
            problem = f"{context}, {problem}"
        raise ContractError(f"YAML syntax error: {problem}", file=file, key=_where(problem_mark),
                            fix="correct the YAML at that position") from None
    except (RecursionError, MemoryError) as exc:  # not expected within the bounds; never a traceback
        raise ContractError(f"the YAML cannot be read ({type(exc).__name__})", file=file,
                            fix="simplify the file: a contract is a short, shallow YAML mapping") from None


def read_yaml_file(path: Path, *, kind: str, error: type[ConfigError] = ContractError) -> Any:
    """Read a short configuration file (at most 1 MiB of UTF-8) and parse it with ``parse_yaml``.

    The size is checked before anything is read into memory (and at most 1 MiB + 1 byte is ever read).
    ``kind`` names the file for the fix ("a contract", "a registry"); errors are ``error``s naming the file.
    """
    file = str(path)
    try:
        with path.open("rb") as handle:
            if path.stat().st_size > MAX_CONTRACT_BYTES:
                raise error("file is larger than 1 MiB", file=file, fix=f"{kind} is a short YAML file")
            raw = handle.read(MAX_CONTRACT_BYTES + 1)
    except OSError as exc:
        raise error(f"cannot read the file ({exc.strerror or type(exc).__name__})", file=file,
                    fix="check the path and permissions") from None
    if len(raw) > MAX_CONTRACT_BYTES:  # not a regular file (a pipe, a device) that kept giving bytes
        raise error("file is larger than 1 MiB", file=file, fix=f"{kind} is a short YAML file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise error("file is not UTF-8 text", file=file, fix="save it as UTF-8") from None
    return parse_yaml(text, file)


def load_contract(path: Path | str) -> Contract:
    """Read and validate one contract file. Raises ContractError naming file, key and fix."""
    path = Path(path)
    file = str(path)
    data = read_yaml_file(path, kind="a contract")
    if not isinstance(data, dict):
        raise ContractError("the file must hold a YAML mapping (key: value lines)", file=file,
                            fix="start with 'contract: <id>' and the other keys of a contract")
    contract = contract_from_mapping(data, file)
    if path.suffix not in (".yaml", ".yml") or path.stem != contract.contract:
        raise ContractError(
            f"file name does not match the contract id {contract.contract!r}", file=file, key="contract",
            fix=f"rename the file to {contract.contract}.yaml or correct the id")
    return contract


def contract_from_mapping(data: dict[str, Any], file: str) -> Contract:
    try:
        return Contract.model_validate(data)
    except ValidationError as exc:
        raise _translate(exc, file) from None


def contract_file_problems(path: Path | str) -> tuple[Contract | None, list[ContractError]]:
    """Every problem of one contract file, not only the first: (the contract if it could be read, problems).

    The contract is returned whenever its structure is valid, even with contract-wide problems, so a
    caller can go on to check it against the source catalogue and the source.
    """
    path = Path(path)
    file = str(path)
    try:
        data = read_yaml_file(path, kind="a contract")
    except ContractError as exc:
        return None, [exc]
    if not isinstance(data, dict):
        return None, [ContractError("the file must hold a YAML mapping (key: value lines)", file=file,
                                    fix="start with 'contract: <id>' and the other keys of a contract")]
    try:
        contract = Contract.model_validate(data, context={DEFER_CHECKS: True})
    except ValidationError as exc:
        return None, translate_all(exc, file)
    problems = [ContractError(message, file=file, key=key or "(contract)", fix=_value_fix(message))
                for key, message in contract.model_problems()]
    if path.suffix not in (".yaml", ".yml") or path.stem != contract.contract:
        problems.append(ContractError(
            f"file name does not match the contract id {contract.contract!r}", file=file, key="contract",
            fix=f"rename the file to {contract.contract}.yaml or correct the id"))
    return contract, problems


def discover_contract_files(contracts_dir: Path) -> list[Path]:
    """Contract files in sorted order (stable DAG order and approvals listing)."""
    if not contracts_dir.is_dir():
        return []
    return sorted(p for p in contracts_dir.iterdir()
                  if p.suffix in (".yaml", ".yml") and p.is_file() and not p.name.startswith("."))


def canonical_form(contract: Contract) -> dict[str, Any]:
    """What an approval covers: every field's value, independent of YAML layout and comments.

    Mappings are hashed with sorted keys, except the columns of a dataset: their order is the order of
    delivery, so they become an ordered list.
    """
    data = contract.model_dump(mode="json", by_alias=True)
    for dataset in data["datasets"]:
        dataset["columns"] = [{"column": name, **spec} for name, spec in dataset["columns"].items()]
    return data


def content_hash(contract: Contract) -> str:
    """SHA-256 of the canonical JSON of the contract, lowercase hex."""
    text = json.dumps(canonical_form(contract), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---- error translation -------------------------------------------------------------------------

def _translate(exc: ValidationError, file: str) -> ContractError:
    return translate_error(exc.errors(include_url=False, include_input=False)[0], file)


def translate_all(exc: ValidationError, file: str) -> list[ContractError]:
    """Every error of a validation, each naming the file, the key and the fix (duplicates once)."""
    out: list[ContractError] = []
    seen: set[str] = set()
    for err in exc.errors(include_url=False, include_input=False):
        translated = translate_error(err, file)
        if str(translated) not in seen:
            seen.add(str(translated))
            out.append(translated)
    return out


def translate_error(err: Any, file: str) -> ContractError:
    """One pydantic error of a contract, as a ContractError naming the file, the key and the fix."""
    loc = list(err["loc"])
    kind = err["type"]
    # pydantic puts the discriminator tag in the location of tagged unions: drop it for readability.
    cleaned: list[Any] = []
    for i, part in enumerate(loc):
        if i >= 2 and loc[i - 2] == "columns" and part in TREATMENT_NAMES:
            continue
        cleaned.append(part)
    key = _format_loc(cleaned)
    msg = err["msg"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        name = cleaned[-1] if cleaned else "?"
        fix = "remove it or correct its spelling"
        if allowed:
            fix += f"; allowed keys here: {', '.join(allowed)}"
        return ContractError(f"unknown key {name!r}", file=file, key=key, fix=fix)
    if kind == "missing":
        return ContractError("required key is missing", file=file, key=key, fix="add it")
    if kind == "union_tag_invalid":
        return ContractError("unknown treatment", file=file, key=key,
                             fix=f"use one of: {', '.join(TREATMENT_NAMES)}")
    if kind == "union_tag_not_found":
        return ContractError("column has no treatment", file=file, key=key,
                             fix=f"add 'treatment:' with one of {', '.join(TREATMENT_NAMES)}, or remove "
                                 "the column to leave it out of the extract")
    if kind == "string_pattern_mismatch":
        return ContractError("value has characters or a shape that are not allowed here", file=file, key=key,
                             fix=_pattern_hint(cleaned))
    if kind.startswith("value_error") or kind == "assertion_error":
        text = msg.removeprefix("Value error, ")
        return ContractError(text, file=file, key=key or "(contract)", fix=_value_fix(text))
    return ContractError(msg, file=file, key=key or "(contract)", fix="correct the value as described")


def _format_loc(loc: list[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _pattern_hint(loc: list[Any]) -> str:
    last = str(loc[-1]) if loc else ""
    if last == "contract":
        return "use upper-case letters, digits and '-', e.g. C-2026-017"
    if last in ("name", "entity") or "columns" in loc or "filter" in loc:
        return "use lower-case letters, digits and '_', starting with a letter (columns may use upper case)"
    if last == "table":
        return "use 'table' or 'schema.table' with letters, digits and '_'"
    return "use plain letters, digits, '_', '-' or '.'"


def _value_fix(text: str) -> str:
    if "no treatment" in text:
        return "see docs/contracts.md for the treatments"
    if "source catalogue" in text:
        return "remove the key; the data owner classifies columns in the catalogue (docs/catalogue.md)"
    if "system itself" in text:
        return "read only tables of the source's own data, as its catalogue lists them (docs/catalogue.md)"
    if "in words" in text:
        return "write the reason as a sentence a reviewer can check"
    return "see docs/contracts.md"


def _allowed_keys(loc: list[Any]) -> list[str]:
    """Walk the model along ``loc`` to list the keys allowed at that place (for the error's fix)."""
    annotation: Any = Contract
    try:
        for part in loc:
            annotation = _unwrap(annotation)
            if isinstance(part, int):
                annotation = typing.get_args(annotation)[0]
            elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
                field = next(f for n, f in annotation.model_fields.items() if (f.alias or n) == part)
                annotation = field.annotation
            elif _is_union(annotation):
                # A tagged union: pydantic's location names the member by its tag (the treatment).
                annotation = next(m for m in typing.get_args(annotation) if _tag_of(m) == part)
            else:
                annotation = typing.get_args(annotation)[-1]  # dict value type
        annotation = _unwrap(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return [f.alias or n for n, f in annotation.model_fields.items()]
    except (StopIteration, IndexError, TypeError):
        return []
    return []


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _tag_of(member: Any) -> str | None:
    if isinstance(member, type) and issubclass(member, BaseModel) and "treatment" in member.model_fields:
        args = typing.get_args(member.model_fields["treatment"].annotation)
        return args[0] if args else None
    return None


def _unwrap(annotation: Any) -> Any:
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation
