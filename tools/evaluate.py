"""Evaluate a training run (or a backbone) with any subset of the registered protocols, in one table.

    python tools/evaluate.py runs/default                          # knn,linear,clusters; writes runs/default/eval.json
    python tools/evaluate.py runs/default --protocols knn,linear,lowshot,finetune,kmeans
    python tools/evaluate.py runs/default/checkpoints/checkpoint_0010.pth --out /tmp/eval10.json
    python tools/evaluate.py RUN_DIR --lowshot 1,16 --protocols lowshot   # a protocol's own flag also turns it on
    python tools/evaluate.py --untrained --arch resnet18 --image-size 32  # no run: random init, the bundled data
    python tools/evaluate.py --exported backbone.pth --data DATA          # tools/export_backbone.py's backbone

The protocols, their flags (one group each below) and their rows of the table come from the registry
(``pcl/eval/protocols/``, one module per protocol); ``-h`` lists them.

``--encoder key`` measures the momentum encoder's backbone and ``--encoder untrained`` the run's architecture at
random initialisation (seeded by ``--seed``), the reference a trained encoder must beat; both write
``RUN_DIR/eval_{key,untrained}.json`` unless ``--out`` is given, and never score the run's clusters.

The run's own data (its stored configuration) is used unless ``--data`` names other data; then the run's clusters
are not scored (they index the run's own images) and ``RUN_DIR/eval.json`` is kept: pass ``--out FILE``. Without
a run (``--untrained``, ``--exported``) nothing is written unless ``--out`` is given.
``eval.json`` holds one block per protocol (shapes in ``pcl/eval/evaluation.py``) and the settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Mapping
from typing import Any

from pcl.eval.eval_config import EvalConfig
from pcl.eval.evaluation import evaluate_run
from pcl.eval.pretrained import add_source_args, load_source
from pcl.eval.protocols import PROTOCOLS
from pcl.eval.registry import Protocol, SettingFlag, setting_flags, settings_from
from pcl.utils.cli import ErrorParser, report_error
from pcl.utils.errors import PCLError
from pcl.utils.flags import Flag, Ranged, flag_of


def default_protocols() -> tuple[str, ...]:
    """The protocols that run when ``--protocols`` is not given."""
    return tuple(n for n, p in PROTOCOLS.items() if p.default_on)


def _protocols(text: str) -> tuple[str, ...]:
    """``"knn,kmeans"`` -> ``("knn", "kmeans")``, every name a registered protocol."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in PROTOCOLS]
    if unknown or not names:
        what = ", ".join(unknown) if unknown else repr(text)
        raise argparse.ArgumentTypeError(f"unknown protocol {what}; choose from {','.join(PROTOCOLS)}")
    return names


def _fmt_default(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) or "none"
    return str(value)


def _add(group: argparse._ActionsContainer, spec: Flag, default: Any, suppress: bool) -> None:
    """Add ``spec`` to ``group``: numeric flags parse and range-check their value(s) (``Ranged``); ``suppress``
    leaves the flag out of the namespace unless given (so that "given" can be told from "default")."""
    help_text = spec.help or ""
    if suppress and default not in (None, ()):
        help_text = f"{help_text} (default {_fmt_default(default)})".strip()
    if spec.numeric:
        spec = dataclasses.replace(spec, type=Ranged(spec))
    action = spec.add_to(group, argparse.SUPPRESS if suppress else default)
    action.help = help_text or None


def _protocol_group(p: argparse.ArgumentParser, protocol: Protocol) -> None:
    """The flags of ``protocol``'s settings, plus ``--no-NAME`` when it runs by default."""
    g = p.add_argument_group(f"{protocol.name} protocol: {protocol.help}")
    if protocol.default_on:
        g.add_argument(f"--no-{protocol.name}", dest=f"no_{protocol.name}", action="store_true", help="do not run it")
    for s in setting_flags(protocol.settings):
        _add(g, s.flag, s.default, suppress=True)


def build_parser() -> argparse.ArgumentParser:
    """The command line: the source, the common settings (``EvalConfig``) and one group per protocol."""
    p = ErrorParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_args(p)
    for f in dataclasses.fields(EvalConfig):
        spec = flag_of(f)
        if spec is not None:
            _add(p, spec, f.default, suppress=False)
    names, default = ",".join(PROTOCOLS), ",".join(default_protocols())
    p.add_argument("--protocols", type=_protocols, default=None, help=f"comma list of {names} (default {default})")
    for protocol in PROTOCOLS.values():
        _protocol_group(p, protocol)
    return p


def _switch_flag(protocol: Protocol) -> SettingFlag | None:
    return next((s for s in setting_flags(protocol.settings) if s.path == (protocol.switch,)), None)


def chosen_protocols(a: argparse.Namespace) -> list[str]:
    """``--protocols`` (or the default set), plus the protocols whose own flag is given, minus ``--no-*``; in
    registry order."""
    chosen = set(a.protocols or default_protocols())
    for name, protocol in PROTOCOLS.items():
        switch = _switch_flag(protocol)
        if switch is not None and switch.flag.dest in vars(a):
            chosen.add(name)
        if getattr(a, f"no_{name}", False):
            chosen.discard(name)
    return [n for n in PROTOCOLS if n in chosen]


def unused_flag_notes(a: argparse.Namespace, chosen: list[str]) -> list[str]:
    """One note per flag given for a protocol that does not run."""
    given = vars(a)
    return [
        f"note: {s.flag.name} has no effect: the {name} protocol is not chosen"
        for name, protocol in PROTOCOLS.items()
        if name not in chosen
        for s in setting_flags(protocol.settings)
        if s.flag.dest in given
    ]


def config_from_args(a: argparse.Namespace, chosen: list[str]) -> EvalConfig:
    """The ``EvalConfig`` of the parsed command line."""
    values = vars(a)
    protocols = {name: settings_from(PROTOCOLS[name].settings, values) for name in chosen}
    return dataclasses.replace(settings_from(EvalConfig, values), protocols=protocols)


def table(result: Mapping[str, Any]) -> str:
    """The evaluation as a small text table: every protocol's rows, in registry order."""
    rows = [row for protocol in PROTOCOLS.values() for row in protocol.rows(result)]
    if not rows:
        return "(no protocol gave a figure)"
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def report(result: Mapping[str, Any]) -> str:
    """What the tool prints: the source line, the table and the notes (skipped protocols, where it was written)."""
    s = result["settings"]
    lines = [f"{s['source']}, {s['arch']}, stem {s['stem']}, data {s['data'] or 'bundled subset'}", table(result)]
    lines += [note for protocol in PROTOCOLS.values() for note in protocol.notes(result)]
    if s.get("no_labels_protocols"):
        lines.append(f"{', '.join(s['no_labels_protocols'])}: – ({s['no_labels']})")
    if s.get("written"):
        lines.append(f"wrote {s['written']}")
    elif s.get("not_written"):
        lines.append(f"not written: {s['not_written']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None, protocols: tuple[str, ...] = ()) -> int:
    """Parse, evaluate, print; ``protocols``: the aliases' fixed choice (``tools/knn_eval.py``)."""
    try:
        a = build_parser().parse_args(argv)
        if protocols and a.protocols is None:
            a.protocols = protocols
        chosen = chosen_protocols(a)
        for note in unused_flag_notes(a, chosen):
            print(note)
        cfg = config_from_args(a, chosen)
        result = evaluate_run(load_source(a, cfg.seed), cfg)
    except (PCLError, ValueError) as e:
        return report_error(e)
    print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
